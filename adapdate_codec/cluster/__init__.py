"""Coding datasets on a Ray cluster, from and to object storage; the public face is adapdate_codec.ray.

    storage.py   fsspec reads, writes (whole objects, atomic) and existence checks; no Ray
    listing.py   inputs -> tasks, streamed folder by folder (--skip-existing in one listing per folder); no Ray
    work.py      one file on a worker: read, code with the Python API, write; the worker's set-up; no Ray
    events.py    what a job reports as it runs; no Ray
    runner.py    the driver: Ray actors, bounded queues, lost workers' files retried
"""
