"""``python -m irl_lens.cli ARGS`` runs ``irl-lens ARGS`` (the job runners start jobs so)."""

from irl_lens.cli.app import main

main()
