from sparsec.cli.main import entry

entry()
