"""Ray Tune for an experiment's trials: the `sweep:` block (`spec`), the driver that runs a
run's arms x seeds or a sweep's search (`driver`), and their MLflow child runs (`tracking`).
"""
