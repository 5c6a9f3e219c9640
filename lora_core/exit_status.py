"""The exit status of every `lora-lab` command: one table, so a script can tell what happened from the number.

    0    done, complete
    1    failed while working: a training run that stopped (NaN, out of memory, a crash; what was kept is
         named), or an I/O error (a full disk, a file another program holds)
    2    refused before doing anything: a usage error, a bad config key or value, an unreadable, unsafe or
         wrong input file, an output that exists, a decision the user must make; nothing was written
    3    written but incomplete: some keys were left unconverted or not applied (each is listed)
    130  interrupted by Ctrl-C (training saves the last complete step and its state first)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2  # also argparse's own status for a usage error
EXIT_INCOMPLETE = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a process stopped by Ctrl-C
