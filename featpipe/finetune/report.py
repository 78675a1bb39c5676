"""`finetune --report`: the training curves and the range test behind --lr auto, as pictures."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .._util import pyplot
from ..errors import UsageError

if TYPE_CHECKING:
    from .train import FinetuneResult


def write_report(result: FinetuneResult, folder: Path) -> list[Path]:
    """``curves.png``: training and validation loss, and validation accuracy, per epoch (0: the linear probe);
    ``lr_find.png``: the range test behind --lr auto, where it ran."""
    folder = Path(folder)
    if not folder.parent.is_dir():
        raise UsageError(f"report folder's parent {str(folder.parent)!r} does not exist; create it or choose another --report")
    folder.mkdir(exist_ok=True)
    plt = pyplot()
    epochs = [e.epoch for e in result.history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    trained = [e for e in result.history if e.epoch > 0]
    ax_loss.plot([e.epoch for e in trained], [e.train_loss for e in trained], marker="o", label="training (augmented)")
    ax_loss.plot(epochs, [e.val_loss for e in result.history], marker="o", label="validation")
    ax_acc.plot(epochs, [e.val_accuracy for e in result.history], marker="o", color="C1")
    for ax in (ax_loss, ax_acc):
        ax.axvline(result.best_epoch, color="grey", lw=6, alpha=0.2)
        ax.set_xlabel("epoch (0: the linear probe)")
        ax.grid(alpha=0.3)
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    ax_acc.set_ylabel("validation accuracy")
    why = "lowest validation loss" if result.val_images else "the last: no validation images"
    fig.suptitle(f"{result.output.name}: epoch {result.best_epoch} kept ({why})", fontsize=10)
    fig.tight_layout()
    path = folder / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written = [path]
    if result.lr_finding is not None:
        from ..classify.lr_find import plot_lr_find

        plot_lr_find(result.lr_finding, folder / "lr_find.png",
                     f"{result.output.name}: range test, fresh head (--lr auto)")
        written.append(folder / "lr_find.png")
    return written
