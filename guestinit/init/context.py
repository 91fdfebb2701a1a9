"""What every boot duty works with: the root it reads and writes, the log, the configuration,
the timeline its phases are recorded on, and the problems that end up in STATUS=.

Duties (gpu/, services/, ...) take a Context and return what they found; only the boot
sequence (boot.py) keeps the whole state. This module imports no duty, so imports flow one
way: boot -> duties -> context and the primitives below it.
"""

from __future__ import annotations

from guestinit.init.clock import Timeline

TYPE_CHECKING = False  # typing is not imported on the boot path; mypy reads this as usual
if TYPE_CHECKING:
    from guestinit.init.kmsg import Log
    from guestinit.init.params import Config
    from guestinit.init.root import Root


class Context:
    def __init__(self, root: Root, log: Log, config: Config) -> None:
        self.root = root
        self.log = log
        self.config = config
        self.timeline = Timeline()
        self.problems: list[str] = []

    def problem(self, text: str) -> None:
        """A problem worth the host's attention: logged, and listed in READY's STATUS=."""
        self.log.warning(text)
        self.problems.append(text)
