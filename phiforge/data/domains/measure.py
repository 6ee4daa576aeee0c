"""Measurement domains: plane geometry, unit conversion and elementary physics.

Every answer is an integer, an exact decimal or an integer multiple of pi, re-derived another way: areas from corner
coordinates, lengths and angles from sympy's points, circles and regular polygons, conversions from sympy's physical
units, and physics from sympy's own solution of the law for the unknown.
"""

from __future__ import annotations

import random
from fractions import Fraction
from functools import lru_cache

from phiforge.data.domains.common import check, dec, product_steps, sym

# --- geometry ---------------------------------------------------------------------------------

_TRIPLES = ((3, 4, 5), (5, 12, 13), (8, 15, 17), (7, 24, 25), (20, 21, 29), (9, 40, 41))
_POLYGONS = {3: "triangle", 4: "quadrilateral", 5: "pentagon", 6: "hexagon", 8: "octagon", 9: "nonagon",
             10: "decagon", 12: "dodecagon"}


def _shoelace(corners: list[tuple[int, int]]) -> Fraction:
    """A polygon's area from its corner coordinates: a different route from the base-times-height formulas.
    (sympy.Polygon gives the same but costs milliseconds per call, too slow for every generated problem.)"""
    twice = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]))
    return Fraction(abs(twice), 2)


def _polygon_name(n: int) -> str:
    return _POLYGONS.get(n, f"{n}-sided polygon")


def geometry(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    import sympy
    from sympy import Point

    kind = rng.choice(("rectangle", "triangle", "circle", "pythagoras", "polygon", "box", "parallelogram")
                      + (("trapezoid",) if d >= 2 else ()))
    hi = 5 + 5 * d
    unit, units = rng.choice((("cm", "centimeters"), ("m", "meters"), ("mm", "millimeters")))
    if kind == "rectangle":
        length, width = rng.randint(2, hi), rng.randint(2, hi)
        corners = [(0, 0), (length, 0), (length, width), (0, width)]
        question = f"A rectangle is {length} {unit} long and {width} {unit} wide. "
        if rng.random() < 0.5:
            value = length * width
            steps = ["The area of a rectangle is length * width.", f"{length} * {width} = {value}."]
            check(_shoelace(corners) == value, "rectangle area")
            question += f"What is its area in square {units}?"
        else:
            value = 2 * (length + width)
            steps = ["The perimeter of a rectangle is 2 * (length + width).",
                     f"2 * ({length} + {width}) = 2 * {length + width} = {value}."]
            around = zip(corners, corners[1:] + corners[:1])
            check(sum(Point(*a).distance(Point(*b)) for a, b in around) == value, "rectangle perimeter")
            question += f"What is its perimeter in {units}?"
        topic = ("A rectangle's area is length times width, and its perimeter, the distance around it, is twice "
                 "the sum of length and width.")
        return question, steps, str(value), topic
    if kind == "triangle":
        base, height = rng.randint(2, hi), rng.randint(2, hi)
        value = Fraction(base * height, 2)
        steps = ["The area of a triangle is base * height / 2.",
                 f"{base} * {height} / 2 = {base * height} / 2 = {dec(value)}."]
        apex = rng.randint(0, base)  # any apex on the line at that height gives the same area
        check(_shoelace([(0, 0), (base, 0), (apex, height)]) == value, "triangle")
        topic = "A triangle's area is half its base times its height, the perpendicular distance to the base."
        question = (f"A triangle has a base of {base} {unit} and a height of {height} {unit}. What is its area in "
                    f"square {units}?")
        return question, steps, dec(value), topic
    if kind == "circle":
        r = rng.randint(1, 3 + 3 * d)
        circle = sympy.Circle(Point(0, 0), r)
        if rng.random() < 0.5:
            answer = f"{r * r}*pi"
            steps = ["The area of a circle is pi * r^2.", f"pi * {r}^2 = pi * {r * r} = {answer}."]
            check(circle.area == sym(answer), "circle area")
            question = f"A circle has radius {r} {unit}. What is its area in square {units}, in terms of pi?"
        else:
            answer = f"{2 * r}*pi"
            steps = ["The circumference of a circle is 2 * pi * r.", f"2 * pi * {r} = {answer}."]
            check(circle.circumference == sym(answer), "circumference")
            question = f"A circle has radius {r} {unit}. What is its circumference in {units}, in terms of pi?"
        topic = "A circle of radius r has area pi * r^2 and circumference 2 * pi * r."
        return question, steps, answer, topic
    if kind == "pythagoras":
        triple, scale = rng.choice(_TRIPLES[:2 + d]), rng.randint(1, d + 1)
        a, b, c = (scale * k for k in triple)
        if rng.random() < 0.5:
            a, b = b, a
        topic = ("In a right triangle the square of the hypotenuse equals the sum of the squares of the two legs: "
                 "c^2 = a^2 + b^2.")
        if rng.random() < 0.5:
            steps = [f"By Pythagoras, c^2 = a^2 + b^2 = {a}^2 + {b}^2 = {a * a} + {b * b} = {c * c}.",
                     f"c = sqrt({c * c}) = {c}."]
            check(Point(0, 0).distance(Point(a, b)) == c == sympy.sqrt(a * a + b * b), "hypotenuse")
            question = (f"A right triangle has legs of {a} {unit} and {b} {unit}. How long is its hypotenuse, in "
                        f"{units}?")
            return question, steps, str(c), topic
        steps = [f"By Pythagoras, b^2 = c^2 - a^2 = {c}^2 - {a}^2 = {c * c} - {a * a} = {b * b}.",
                 f"b = sqrt({b * b}) = {b}."]
        check(Point(0, 0).distance(Point(a, b)) == c and sympy.sqrt(c * c - a * a) == b, "leg")
        question = (f"A right triangle has a hypotenuse of {c} {unit} and one leg of {a} {unit}. How long is the "
                    f"other leg, in {units}?")
        return question, steps, str(b), topic
    if kind == "box":
        sides = [rng.randint(2, 3 + 2 * d) for _ in range(3)]
        text, value = product_steps(sides)
        steps = ["The volume of a box is length * width * height.", f"{text}."]
        # The determinant of the three edge vectors is the box's volume, computed without the formula above.
        check(sympy.Matrix.diag(*sides).det() == value, "box volume")
        question = (f"A box is {sides[0]} {unit} long, {sides[1]} {unit} wide and {sides[2]} {unit} high. What is "
                    f"its volume in cubic {units}?")
        topic = "The volume of a box (a rectangular prism) is length times width times height."
        return question, steps, str(value), topic
    if kind in ("parallelogram", "trapezoid"):
        base, height, shift = rng.randint(2, hi), rng.randint(2, hi), rng.randint(1, 5)
        if kind == "parallelogram":
            value = base * height
            corners = [(0, 0), (base, 0), (base + shift, height), (shift, height)]
            steps = ["The area of a parallelogram is base * height.", f"{base} * {height} = {value}."]
            question = (f"A parallelogram has a base of {base} {unit} and a height of {height} {unit}. What is its "
                        f"area in square {units}?")
            topic = "A parallelogram's area is its base times its height, just like the rectangle it can be cut into."
        else:
            top = rng.randint(1, hi)
            value = Fraction((base + top) * height, 2)
            corners = [(0, 0), (base, 0), (shift + top, height), (shift, height)]
            steps = ["The area of a trapezoid is (a + b) * height / 2, where a and b are the parallel sides.",
                     f"({base} + {top}) * {height} / 2 = {base + top} * {height} / 2 = {(base + top) * height} / 2 "
                     f"= {dec(value)}."]
            question = (f"A trapezoid has parallel sides of {base} {unit} and {top} {unit} and a height of {height} "
                        f"{unit}. What is its area in square {units}?")
            topic = "A trapezoid's area is the average of its two parallel sides times its height."
        check(_shoelace(corners) == value, kind)
        return question, steps, dec(value), topic
    what = rng.choice(("sum", "interior", "exterior"))
    if what == "sum":
        n = rng.randint(3, 8 + 2 * d)
        value = (n - 2) * 180
        steps = [f"A polygon with n sides has interior angles adding up to (n - 2) * 180 degrees.",
                 f"({n} - 2) * 180 = {n - 2} * 180 = {value}."]
        question = f"What is the sum of the interior angles of a {_polygon_name(n)}, in degrees?"
        check(sympy.RegularPolygon(Point(0, 0), 1, n).interior_angle * n * 180 / sympy.pi == value, "angle sum")
    else:
        n = rng.choice([k for k in range(3, 13 + 6 * d) if 360 % k == 0])
        polygon = sympy.RegularPolygon(Point(0, 0), 1, n)
        if what == "interior":
            value = (n - 2) * 180 // n
            steps = [f"The interior angles of a polygon with n sides add up to (n - 2) * 180 = "
                     f"({n} - 2) * 180 = {(n - 2) * 180} degrees.",
                     f"A regular polygon's angles are equal, so each is {(n - 2) * 180} / {n} = {value}."]
            check(polygon.interior_angle * 180 / sympy.pi == value, "interior angle")
        else:
            value = 360 // n
            steps = ["The exterior angles of any polygon add up to 360 degrees.",
                     f"A regular polygon's exterior angles are equal, so each is 360 / {n} = {value}."]
            check(polygon.exterior_angle * 180 / sympy.pi == value, "exterior angle")
        question = f"What is the size of each {what} angle of a regular {_polygon_name(n)}, in degrees?"
    topic = ("The interior angles of a polygon with n sides add up to (n - 2) * 180 degrees and its exterior "
             "angles to 360 degrees; in a regular polygon all of them are equal.")
    return question, steps, str(value), topic


# --- unit conversion --------------------------------------------------------------------------

# (bigger unit, smaller unit, how many smaller units make one bigger): every chain below walks these links.
_LINKS = (("km", "m", 1000), ("m", "cm", 100), ("cm", "mm", 10), ("kg", "g", 1000), ("g", "mg", 1000),
          ("L", "mL", 1000), ("day", "h", 24), ("h", "min", 60), ("min", "s", 60),
          ("km^2", "ha", 100), ("ha", "m^2", 10000), ("m^2", "cm^2", 10000))
_AREA = {"km^2", "ha", "m^2", "cm^2"}
_NAMES = {"km": "kilometers", "m": "meters", "cm": "centimeters", "mm": "millimeters", "kg": "kilograms",
          "g": "grams", "mg": "milligrams", "L": "liters", "mL": "milliliters", "day": "days", "h": "hours",
          "min": "minutes", "s": "seconds", "km^2": "square kilometers", "ha": "hectares",
          "m^2": "square meters", "cm^2": "square centimeters"}


def _chains(hops: int, area: bool) -> list[list[tuple[str, str, int]]]:
    """Runs of `hops` consecutive links (km -> m -> cm), area units only when asked for."""
    chains = []
    for i in range(len(_LINKS) - hops + 1):
        run = list(_LINKS[i:i + hops])
        if all(run[j][1] == run[j + 1][0] for j in range(hops - 1)) and ((run[0][0] in _AREA) == area):
            chains.append(run)
    return chains


@lru_cache(maxsize=1)
def _sympy_units() -> dict:
    from sympy.physics import units as u

    return {"km": u.kilometer, "m": u.meter, "cm": u.centimeter, "mm": u.millimeter, "kg": u.kilogram,
            "g": u.gram, "mg": u.milligram, "L": u.liter, "mL": u.milliliter, "day": u.day, "h": u.hour,
            "min": u.minute, "s": u.second, "km^2": u.kilometer ** 2, "ha": u.hectare, "m^2": u.meter ** 2,
            "cm^2": u.centimeter ** 2}


@lru_cache(maxsize=None)
def _sympy_factor(src: str, dst: str) -> Fraction:
    """How many `dst` make one `src`, by sympy's unit system rather than the link table."""
    from sympy.physics.units import convert_to

    units = _sympy_units()
    ratio = convert_to(units[src], units[dst]) / units[dst]
    check(ratio.is_Rational, f"sympy converts {src} to {dst}")
    return Fraction(int(ratio.p), int(ratio.q))


def unit_conversion(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    hops = 1 if d == 1 else rng.randint(1, 2)
    chain = rng.choice(_chains(hops, area=d >= 3 and rng.random() < 0.4))
    factor = 1
    for _, _, f in chain:
        factor *= f
    down = rng.random() < 0.5  # big -> small multiplies, small -> big divides
    src, dst = (chain[0][0], chain[-1][1]) if down else (chain[-1][1], chain[0][0])
    places = rng.randint(0, min(d, 2))
    # The amount in the larger unit is the one drawn, so dividing always ends in a short exact decimal
    # (never 7 / 60 hours) and multiplying never needs more places than the drawn amount has.
    nice = Fraction(rng.randint(1, 10 ** places * (10 + 20 * d)), 10 ** places)
    value, result = (nice, nice * factor) if down else (nice * factor, nice)
    answer = dec(result)
    facts = " and ".join(f"1 {big} = {f} {small}" for big, small, f in chain)
    steps = [f"{facts}, so 1 {chain[0][0]} = {factor} {chain[-1][1]}." if hops > 1 else f"{facts}."]
    if down:
        steps.append(f"To go from {src} to {dst}, multiply by {factor}: {dec(value)} * {factor} = {answer}.")
    else:
        steps.append(f"To go from {src} to {dst}, divide by {factor}: {dec(value)} / {factor} = {answer}.")
    check(value * _sympy_factor(src, dst) == result, "unit conversion")
    topic = ("To convert from a larger unit to a smaller one, multiply by how many small units make one large "
             "unit; to convert from a smaller unit to a larger one, divide by it.")
    return f"Convert {dec(value)} {src} to {_NAMES[dst]}.", steps, answer, topic


# --- physics ----------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _solved(law: str, unknown: str):
    """sympy's own solution of a law for one of its symbols, as a function of the others (cached: solve is slow)."""
    import sympy

    s = sympy.symbols("dist v t u a I R V rho m vol")
    env = dict(zip(("dist", "v", "t", "u", "a", "I", "R", "V", "rho", "m", "vol"), s))
    laws = {"speed": sympy.Eq(env["dist"], env["v"] * env["t"]),
            "velocity": sympy.Eq(env["v"], env["u"] + env["a"] * env["t"]),
            "displacement": sympy.Eq(env["dist"], env["u"] * env["t"] + env["a"] * env["t"] ** 2 / 2),
            "ohm": sympy.Eq(env["V"], env["I"] * env["R"]),
            "density": sympy.Eq(env["rho"], env["m"] / env["vol"])}
    (expr,) = sympy.solve(laws[law], env[unknown])
    return expr, env


def _law_check(law: str, unknown: str, answer: str, **known: Fraction) -> None:
    import sympy

    expr, env = _solved(law, unknown)
    value = expr.subs({env[k]: sympy.Rational(v.numerator, v.denominator) for k, v in known.items()})
    check(value == sympy.Rational(Fraction(answer).numerator, Fraction(answer).denominator), f"{law} law")


def physics(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    kind = rng.choice(("speed", "velocity", "displacement", "ohm", "density"))
    hi = 10 + 10 * d
    if kind == "speed":
        v, t = rng.randint(2, hi), rng.randint(2, hi)
        dist = v * t
        topic = "At constant speed, distance = speed * time, so speed = distance / time and time = distance / speed."
        unknown = rng.choice(("dist", "v", "t"))
        if unknown == "dist":
            steps, answer = ["At constant speed, distance = speed * time.", f"distance = {v} * {t} = {dist}."], dist
            question = f"A car travels at a constant speed of {v} m/s for {t} s. How far does it go, in meters?"
        elif unknown == "v":
            steps, answer = ["At constant speed, speed = distance / time.", f"speed = {dist} / {t} = {v}."], v
            question = f"A cyclist covers {dist} m in {t} s at a constant speed. What is the speed, in m/s?"
        else:
            steps, answer = ["At constant speed, time = distance / speed.", f"time = {dist} / {v} = {t}."], t
            question = f"A train moves at a constant {v} m/s. How many seconds does it take to travel {dist} m?"
        known = {k: Fraction(x) for k, x in (("dist", dist), ("v", v), ("t", t)) if k != unknown}
        _law_check("speed", unknown, str(answer), **known)
        return question, steps, str(answer), topic
    if kind in ("velocity", "displacement"):
        u, a, t = rng.randint(0, 5 * d), rng.randint(1, 2 + 2 * d), rng.randint(1, 4 + 4 * d)
        topic = ("With constant acceleration a from initial speed u, after time t the speed is u + a*t and the "
                 "distance covered is u*t + a*t^2/2.")
        if kind == "velocity":
            answer = str(u + a * t)
            steps = ["With constant acceleration, final speed = initial speed + acceleration * time.",
                     f"v = {u} + {a} * {t} = {u} + {a * t} = {answer}."]
            question = (f"A cart starts at {u} m/s and speeds up with a constant acceleration of {a} m/s^2 for "
                        f"{t} s. What is its final speed, in m/s?")
            _law_check("velocity", "v", answer, u=Fraction(u), a=Fraction(a), t=Fraction(t))
            return question, steps, answer, topic
        half = Fraction(a * t * t, 2)
        answer = dec(u * t + half)
        steps = ["With constant acceleration, distance = initial speed * time + acceleration * time^2 / 2.",
                 f"{u} * {t} = {u * t}.", f"{a} * {t}^2 / 2 = {a} * {t * t} / 2 = {a * t * t} / 2 = {dec(half)}.",
                 f"distance = {u * t} + {dec(half)} = {answer}."]
        question = (f"A cart starts at {u} m/s and accelerates at a constant {a} m/s^2. How far does it travel in "
                    f"{t} s, in meters?")
        _law_check("displacement", "dist", answer, u=Fraction(u), a=Fraction(a), t=Fraction(t))
        return question, steps, answer, topic
    if kind == "ohm":
        r = rng.randint(2, 10 + 20 * d)
        i = Fraction(rng.randint(1, 10 * (2 + d)), 10 if d == 1 else rng.choice((10, 100)))
        v = i * r
        topic = ("Ohm's law: voltage = current * resistance (V = I * R), so I = V / R and R = V / I.")
        unknown = rng.choice(("V", "I", "R"))
        if unknown == "V":
            answer = dec(v)
            steps = ["Ohm's law: voltage = current * resistance.", f"V = {dec(i)} * {r} = {answer}."]
            question = (f"A current of {dec(i)} A flows through a {r} ohm resistor. What is the voltage across it, "
                        f"in volts?")
        elif unknown == "I":
            answer = dec(i)
            steps = ["Ohm's law gives current = voltage / resistance.", f"I = {dec(v)} / {r} = {answer}."]
            question = f"A voltage of {dec(v)} V is applied across a {r} ohm resistor. What current flows, in amperes?"
        else:
            answer = str(r)
            steps = ["Ohm's law gives resistance = voltage / current.", f"R = {dec(v)} / {dec(i)} = {answer}."]
            question = (f"A voltage of {dec(v)} V drives a current of {dec(i)} A through a resistor. What is its "
                        f"resistance, in ohms?")
        known = {k: x for k, x in (("V", v), ("I", i), ("R", Fraction(r))) if k != unknown}
        _law_check("ohm", unknown, answer, **known)
        return question, steps, answer, topic
    rho = Fraction(rng.randint(5, 10 * (5 + 5 * d)), 10)
    vol = rng.randint(2, 20 * d)
    mass = rho * vol
    topic = "Density is mass divided by volume, so mass = density * volume."
    if rng.random() < 0.5:
        answer = dec(rho)
        steps = ["Density = mass / volume.", f"density = {dec(mass)} / {vol} = {answer}."]
        question = (f"A block has a mass of {dec(mass)} g and a volume of {vol} cm^3. What is its density, in "
                    f"g/cm^3?")
        _law_check("density", "rho", answer, m=mass, vol=Fraction(vol))
    else:
        answer = dec(mass)
        steps = ["Density = mass / volume, so mass = density * volume.", f"mass = {dec(rho)} * {vol} = {answer}."]
        question = f"A liquid has a density of {dec(rho)} g/cm^3. What is the mass of {vol} cm^3 of it, in grams?"
        _law_check("density", "m", answer, rho=rho, vol=Fraction(vol))
    return question, steps, answer, topic
