"""metarec's own sub-commands, registered in the ``metarec.cli`` entry-point group."""
