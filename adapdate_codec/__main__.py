from adapdate_codec.cli import main

main()
