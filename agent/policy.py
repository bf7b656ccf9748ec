"""The failure policy: what a missing or failed dataset means for the submission."""

from __future__ import annotations

import sys
from typing import Callable, Optional, TextIO, Tuple

PROMPT = "Continue with eval submission anyway? [y/N] "


def ask_terminal(stdin: TextIO = sys.stdin, stderr: TextIO = sys.stderr) -> bool:
    """Prompt on stderr (stdout may carry JSON); only 'y'/'yes' means yes. End of input
    and Ctrl-C mean no."""
    stderr.write(PROMPT)
    stderr.flush()
    try:
        answer = stdin.readline()
    except KeyboardInterrupt:
        stderr.write("\n")
        return False
    if not answer:  # end of input
        stderr.write("\n")
        return False
    return answer.strip().lower() in ("y", "yes")


def decide(problems: int, mode: str, non_interactive: str, interactive: Optional[bool] = None,
           ask: Callable[[], bool] = ask_terminal) -> Tuple[str, str]:
    """('proceed' | 'stop', why). `interactive` defaults to: is stdin a terminal."""
    if problems == 0:
        return "proceed", "every dataset is ready"
    if mode == "continue":
        return "proceed", "policy=continue: submitting despite the problems above"
    if mode == "stop":
        return "stop", "policy=stop: not submitting"
    if interactive is None:
        interactive = sys.stdin.isatty()
    if not interactive:
        verdict = "proceed" if non_interactive == "continue" else "stop"
        return verdict, f"policy=ask without a terminal: doing policy.non_interactive={non_interactive}"
    if ask():
        return "proceed", "policy=ask: answered yes"
    return "stop", "policy=ask: answered no"
