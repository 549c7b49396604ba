"""jaxbud.metrics.Writer: JSON lines always, TensorBoard events once something is written."""
import os

from jaxbud import metrics


def test_tensorboard_writer_starts_at_the_first_write(tmp_path):
  w = metrics.Writer(str(tmp_path))
  assert not (tmp_path / 'tensorboard').exists()  # nothing for an exit handler to start
  w.close()
  w = metrics.Writer(str(tmp_path))
  w.write(3, {'train_loss': 1.5})
  w.close()
  assert os.listdir(tmp_path / 'tensorboard')[0].startswith('events.out.tfevents')
  assert metrics.read(str(tmp_path)) == [{'step': 3, 'train_loss': 1.5}]
