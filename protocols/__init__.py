"""Wire codecs and shared vocabularies.

Sans-I/O: nothing here touches sockets, files, clocks or logging set-up.
"""
