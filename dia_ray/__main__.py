from dia_ray.cli import run

run()
