"""Dataset file formats, read without Lightning: what a data module or a ``check`` command needs to open them.

* :mod:`.files`: streaming JSON arrays, content digests, atomic ``.npz`` caches, RGB decoding;
* :mod:`.checks`: validation of constructor arguments with the accepted range in the message;
* :mod:`.broden_tables`: Broden's label, category and coverage CSV files and the label-PNG decoder;
* :mod:`.broden`: the Broden reader (index rows, images, label planes, vocabulary, sparse concept index);
* :mod:`.broden_check`: the ``check`` command's full scan of a Broden-format folder, listing every defect.
"""
