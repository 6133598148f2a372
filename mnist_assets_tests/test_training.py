"""Training's progress log, driven through Keras's own callback hooks."""

from mnist_assets import training


class Lines(list):
    """A log that keeps what it is told (the interface of Dagster's ``context.log`` that training uses)."""

    def info(self, message: str) -> None:
        self.append(message)


def test_progress_logs_within_an_epoch_at_most_every_ten_seconds():
    times = iter([0.0, 0.0, 3.0, 9.9, 10.0, 15.0, 19.9, 20.5, 21.0, 30.0])
    lines = Lines()
    progress = training.ProgressLog(lines, epochs=2, steps=8, clock=lambda: next(times))
    progress.on_epoch_begin(0)  # t=0
    for batch in range(6):  # t=3, 9.9, 10, 15, 19.9, 20.5
        progress.on_train_batch_end(batch, {"loss": 0.123456, "accuracy": 0.5})
    progress.on_epoch_end(0, {"loss": 0.1, "accuracy": 0.9, "val_loss": 0.2, "val_accuracy": 0.85})  # t=21
    assert lines == [
        "epoch 1/2, batch 3/8: loss=0.1235, accuracy=0.5000",  # t=10: 10 s after the epoch began
        "epoch 1/2, batch 6/8: loss=0.1235, accuracy=0.5000",  # t=20.5: 10.5 s after the last line
        "epoch 1/2: loss=0.1000, accuracy=0.9000, val_loss=0.2000, val_accuracy=0.8500",
    ]


def test_progress_counts_from_the_last_line_of_any_kind():
    times = iter([0.0, 0.0, 5.0, 12.0, 14.0, 15.0])
    lines = Lines()
    progress = training.ProgressLog(lines, epochs=3, steps=4, clock=lambda: next(times))
    progress.on_epoch_begin(1)  # t=0
    progress.on_epoch_end(1, {"loss": 0.5})  # t=5
    progress.on_epoch_begin(2)  # t=12
    progress.on_train_batch_end(0, {"loss": 0.4})  # t=14: 2 s into the epoch
    progress.on_train_batch_end(1, {"loss": 0.4})  # t=15
    assert lines == ["epoch 2/3: loss=0.5000"]
