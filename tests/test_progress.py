"""A bar on the driver that a Ray worker moves: what the pretraining and VQA jobs show while Ray Train runs."""

from biomedclip.progress import ProgressBoard, remote_bar


def test_a_ray_task_moves_the_drivers_bar(ray_session, capsys):
    @ray_session.remote(num_cpus=0)
    def train(board, steps: int) -> None:
        for step in range(1, steps + 1):
            board.update(step, steps, f"loss {1 / step:.2f}")

    with remote_bar("training", unit="step") as board:
        ray_session.get(train.remote(board, 4))
    drawn = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert "4/4" in drawn[-1] and "loss 0.25" in drawn[-1] and drawn[-1].startswith("training: 100%")


def test_without_ray_the_board_lives_in_this_process():
    board = ProgressBoard(remote=False)  # what Ray Train's local mode (num_workers 0) gets when Ray is not running
    board.update(2, 3, "test acc 0.5")
    assert board.read() == (2, 3, "test acc 0.5")
