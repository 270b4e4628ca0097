"""What the training loop does besides training, one hook per concern (fast-reid's hooks).

:class:`~jlml_plugin.engine.JLMLEngine` calls each hook, in order, at these points:

    after_resume(engine, checkpoint)    after a checkpoint is restored (its contents)
    before_train(engine, save_dir)      once, before the first epoch
    before_epoch(engine)                before each epoch (``engine.num_batches`` is set)
    after_step(engine, losses, images, seconds)
                                        after every training step (``losses``: the
                                        epoch's running means; ``images``: on all ranks)
    after_epoch(engine, summary)        after each epoch, its learning rate stepped
                                        (``summary``: the epoch's mean losses)
    after_eval(engine, results)         after each evaluation (results per target)
    after_train(engine)                 once, at the end

The loop's concerns besides training are hooks: progress, TensorBoard, evaluation and
checkpoints (:func:`default_hooks`, in the order they run). A hook overrides only what it
needs; each can be left out of ``JLMLEngine(hooks=...)`` alone, and tested alone. The
engine's own ``throughput`` counter always runs first.
"""
from __future__ import annotations

import datetime
import time
from typing import Any, Dict, List

from torch.utils.tensorboard import SummaryWriter

from .progress import progress

__all__ = ['Hook', 'Throughput', 'ProgressLog', 'TensorBoardLog', 'EvalHook', 'PeriodicCheckpoint',
           'default_hooks', 'format_losses']


class Hook:
    def after_resume(self, engine, checkpoint: Dict[str, Any]) -> None:
        pass

    def before_train(self, engine, save_dir: str) -> None:
        pass

    def before_epoch(self, engine) -> None:
        pass

    def after_step(self, engine, losses: Dict[str, float], images: int, seconds: float) -> None:
        pass

    def after_epoch(self, engine, summary: Dict[str, float]) -> None:
        pass

    def after_eval(self, engine, results: Dict[str, Any]) -> None:
        pass

    def after_train(self, engine) -> None:
        pass


def format_losses(summary: Dict[str, float]) -> str:
    """``name value`` pairs, three decimals; a value under 0.01 (a threshold τ, say) in
    scientific notation, so that it does not print as 0.000."""
    return ' '.join(f'{name} {value:.2e}' if 0 < abs(value) < 0.01 else f'{name} {value:.3f}'
                    for name, value in summary.items())


class Throughput(Hook):
    """Training images and seconds (steps only, no evaluation), and the wall time of the
    segments before a resume, kept across resumes: the engine saves :meth:`state_dict` in
    every checkpoint as ``counters``. Time after an interrupted run's last checkpoint is
    not counted, since the resumed run does that work again."""

    def __init__(self) -> None:
        self.images, self.seconds = 0, 0.0
        self.started, self.wall_seconds_before_resume = time.monotonic(), 0.0

    @property
    def wall_seconds(self) -> float:
        return self.wall_seconds_before_resume + time.monotonic() - self.started

    def after_step(self, engine, losses, images, seconds) -> None:
        self.images += images
        self.seconds += seconds

    def state_dict(self) -> Dict[str, Any]:
        return dict(train_images=self.images, train_seconds=self.seconds,
                    wall_seconds=self.wall_seconds)

    def after_resume(self, engine, checkpoint) -> None:
        state = checkpoint.get('counters') or {}
        self.images = int(state.get('train_images', 0))
        self.seconds = float(state.get('train_seconds', 0.0))
        self.wall_seconds_before_resume = float(state.get('wall_seconds', 0.0))
        self.started = time.monotonic()


class ProgressLog(Hook):
    """A tqdm bar with the epoch's and the whole run's time left (a plain line every
    ``engine.print_freq`` steps where the output is no terminal), and one line per epoch
    with its mean losses and images/s. Silent off rank 0."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar, self.images, self.seconds, self.lr = None, 0, 0.0, 0.0

    def before_epoch(self, engine) -> None:
        self.bar = progress(engine.num_batches, f'epoch {engine.epoch + 1}/{engine.max_epoch}',
                            every=engine.print_freq, enabled=self.enabled, unit='batch')
        self.images, self.seconds = 0, 0.0

    def after_step(self, engine, losses, images, seconds) -> None:
        self.images += images
        self.seconds += seconds
        steps_left = (engine.num_batches - engine.batch_idx - 1
                      + (engine.max_epoch - engine.epoch - 1) * engine.num_batches)
        eta = datetime.timedelta(seconds=int(self.seconds / (engine.batch_idx + 1) * steps_left))
        self.lr = engine.get_current_lr()  # the epoch's: its summary comes after the lr step
        self.bar.set_postfix_str(f'{format_losses(losses)} lr {self.lr:.2e} total-eta {eta}',
                                 refresh=False)
        self.bar.update(1)

    def after_epoch(self, engine, summary) -> None:
        self.bar.close()
        if self.enabled:
            rate = self.images / self.seconds if self.seconds else 0.0
            print(f'epoch {engine.epoch + 1}/{engine.max_epoch}: {format_losses(summary)} lr '
                  f'{self.lr:.2e} | {rate:.1f} img/s, '
                  f'{datetime.timedelta(seconds=int(self.seconds))}')


class TensorBoardLog(Hook):
    """TensorBoard scalars in ``save_dir``: ``Train/<loss>`` (running means), ``Train/lr``
    and ``Train/time`` every step, ``Test/<target>/{rank1,mAP,mINP}`` per evaluation."""

    def __init__(self) -> None:
        self.writer, self.seconds = None, 0.0

    def before_train(self, engine, save_dir) -> None:
        self.writer = SummaryWriter(log_dir=save_dir)

    def before_epoch(self, engine) -> None:
        self.seconds = 0.0

    def after_step(self, engine, losses, images, seconds) -> None:
        if self.writer is None:
            return
        n_iter = engine.epoch * engine.num_batches + engine.batch_idx
        self.seconds += seconds
        self.writer.add_scalar('Train/time', self.seconds / (engine.batch_idx + 1), n_iter)
        for name, value in losses.items():
            self.writer.add_scalar('Train/' + name, value, n_iter)
        self.writer.add_scalar('Train/lr', engine.get_current_lr(), n_iter)

    def after_eval(self, engine, results) -> None:
        if self.writer is None:
            return
        for name, result in results.items():
            for metric, value in (('rank1', result.rank(1)), ('mAP', result.mAP),
                                  ('mINP', result.mINP)):
                self.writer.add_scalar(f'Test/{name}/{metric}', value, engine.epoch)

    def after_train(self, engine) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class EvalHook(Hook):
    """torchreid's schedule of evaluations, as ``JLMLEngine.run``'s arguments set it
    (``engine.eval_freq``, ``engine.start_eval``, ``engine.test_kwargs``): every
    ``eval_freq`` epochs from ``start_eval``, and after the last one. A resumed run with no
    epoch left is evaluated once. ``results`` holds the last evaluation's."""

    def __init__(self) -> None:
        self.results: Dict[str, Any] = {}

    def before_train(self, engine, save_dir) -> None:
        self.results = {}
        if engine.start_epoch >= engine.max_epoch > 0:  # resumed a finished run: report it
            self.results = engine.test(**engine.test_kwargs)

    def after_epoch(self, engine, summary) -> None:
        epoch = engine.epoch + 1
        last = epoch == engine.max_epoch
        if last or (epoch >= engine.start_eval and engine.eval_freq > 0
                    and epoch % engine.eval_freq == 0):
            if engine.main and last:
                print('=> Final test')
            self.results = engine.test(**engine.test_kwargs)


class PeriodicCheckpoint(Hook):
    """A resumable checkpoint every ``period`` epochs (0: only after evaluations and at the
    end, as torchreid) and after every evaluation, the newest ``keep`` kept (0: all). Each
    carries the last evaluation's Rank-1 (torchreid's checkpoint format); it follows any
    evaluation of the same epoch, so it stands after :class:`EvalHook`."""

    def __init__(self, period: int = 1, keep: int = 2) -> None:
        self.period, self.keep = period, keep
        self.rank1, self.evaluated = 0.0, False

    def after_resume(self, engine, checkpoint) -> None:
        self.rank1 = float(checkpoint.get('rank1', 0.0))

    def before_epoch(self, engine) -> None:
        self.evaluated = False

    def after_eval(self, engine, results) -> None:
        self.evaluated = True
        if results:  # other ranks wait while rank 0 evaluates
            self.rank1 = list(results.values())[-1].rank(1)

    def after_epoch(self, engine, summary) -> None:
        last = engine.epoch + 1 == engine.max_epoch
        if self.evaluated or last or (self.period > 0 and (engine.epoch + 1) % self.period == 0):
            engine.save_model(engine.epoch, self.rank1, engine.save_dir, keep=self.keep)


def default_hooks(main: bool = True, checkpoint_period: int = 1,
                  keep_checkpoints: int = 2) -> List[Hook]:
    """The loop's hooks, in order: progress, TensorBoard (rank 0 only), evaluation, then
    checkpoints."""
    return [ProgressLog(enabled=main), *([TensorBoardLog()] if main else []), EvalHook(),
            PeriodicCheckpoint(checkpoint_period, keep_checkpoints)]
