from crops.cli import main

main()
