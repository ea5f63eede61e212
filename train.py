from lenx.train import main

main()
