"""core: what every node and command stands on: message schemas, the node runtime, settings, logging,
recordings and the helpers that run dataflows.  Imports nothing else of the package."""
