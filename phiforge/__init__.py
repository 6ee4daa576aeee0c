"""phiforge: the Phi-4 recipe (synthetic data, pretraining, post-training, evaluation) as one small library.

Packages by role, each importing only from the layers below it (tests/test_layers.py checks this, and that no
imports form a cycle):

    cli, pipeline, experiment, report, runcompare, plan     the commands and the stage runner
    serve      chat, server, access rules, web page         talking to a model
    eval       contest, AMC, choice, benchmarks, Gemma       measuring a model
    train      optim, pretrain, midtrain, sft, pts, dpo...   making a model
    data       generators, renderings, workflows, organic    making its data
    lm         model, tokenizer, checkpoints, generation     the models themselves, and teachers
    config, stages, rundir, errors, answers, sandbox, datahome, machine   the base every layer shares
"""

__version__ = "0.1.0"
