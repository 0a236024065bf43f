"""What a replica says of what it does not know because it has not read etcd since it
started: until then it lists only what it decided or learned since, and says so."""

NOT_READ = (
    "this control plane has not read etcd since it started (is etcd reachable?): "
    "{what} may be there; ask again, or ask another replica"
)

#: How an answer saying so begins (the CLI tells it from a control plane it cannot reach).
NOT_READ_START = NOT_READ.split(":", 1)[0]
