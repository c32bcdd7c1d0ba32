from experiments import stopping
from experiments.benchmark.command import main

stopping.run(main)
