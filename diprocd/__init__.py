"""diprocd: the DIstributed PROcess Control Daemon.

Three daemons: dpd-workerd supervises the processes of one node from one JSON
file, dpd-masterd publishes every node's process list, dpd-clientd receives its
node's list and rewrites the worker's JSON file.
"""

__version__ = "0.1.0"
