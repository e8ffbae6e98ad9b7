from hftrain.command import main

main()
