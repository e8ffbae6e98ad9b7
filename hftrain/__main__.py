from hftrain.cli import main

main()
