"""What a replica says of what it does not know because it has not read etcd since it
started: until then it lists only what it decided or learned since, and says so."""

NOT_READ = (
    "this control plane has not read etcd since it started (is etcd reachable?): "
    "{what} may be there; ask again, or ask another replica"
)
