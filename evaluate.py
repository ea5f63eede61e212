from lenx.evaluate import main

main()
