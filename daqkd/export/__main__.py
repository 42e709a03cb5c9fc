from daqkd.export.command import main

main()
