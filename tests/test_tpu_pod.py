"""launch/tpu_pod.sh: valid bash, a usage text, and (DRY_RUN) the gcloud commands it would run."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'launch', 'tpu_pod.sh')


def sh(*args, **env):
  return subprocess.run(['bash', SCRIPT, *args], env={**os.environ, **env}, capture_output=True,
                        text=True, check=False, timeout=30)


def test_syntax_and_usage():
  assert subprocess.run(['bash', '-n', SCRIPT], check=False).returncode == 0
  out = sh('help')
  assert out.returncode == 0
  for word in ('create', 'install', 'run', 'delete', 'DRY_RUN', 'TPU_NAME=jaxbud-pod'):
    assert word in out.stdout
  assert sh().returncode == 2
  bad = sh('bogus')
  assert bad.returncode == 2 and "unknown command 'bogus'" in bad.stderr


def test_dry_run_prints_the_gcloud_commands():
  env = dict(DRY_RUN='1', TPU_NAME='pod1', ZONE='us-central2-b', ACCELERATOR='v4-32',
             BUCKET='gs://my-bucket')
  create = sh('create', **env)
  assert create.returncode == 0
  assert create.stdout.startswith('gcloud compute tpus tpu-vm create pod1 --zone=us-central2-b')
  assert '--accelerator-type=v4-32 --version=tpu-ubuntu2204-base' in create.stdout
  install = sh('install', **env)
  assert install.returncode == 0 and '--worker=all' in install.stdout
  assert "-e '.[data]' 'jax[tpu]==0.10.2'" in install.stdout
  assert 'gcsfuse --implicit-dirs --rename-dir-limit=200000 my-bucket /mnt/jaxbud' in install.stdout
  run = sh('run', '--config.train.batch_size=1024', **env)
  assert run.returncode == 0 and 'tpu-vm ssh pod1' in run.stdout and '--worker=all' in run.stdout
  assert ('python -m launch.train --config=configs/resnet50_imagenet.py '
          '--workdir=/mnt/jaxbud/runs/resnet50_imagenet') in run.stdout
  assert '--multihost --config.train.batch_size=1024' in run.stdout
  assert 'tpu-vm delete pod1' in sh('delete', **env).stdout


def test_install_and_run_need_a_bucket():
  for cmd in ('install', 'run'):
    out = sh(cmd, DRY_RUN='1', BUCKET='')
    assert out.returncode == 2 and 'set BUCKET=gs://NAME' in out.stderr and not out.stdout
