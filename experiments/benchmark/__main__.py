from experiments import stopping
from experiments.benchmark.main import main

stopping.run(main)
