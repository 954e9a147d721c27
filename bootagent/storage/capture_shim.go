package storage

// replicator is the role's peer replication client; nil until engineer B2's
// package lands (then: r.Replication, nil when replication is off).
func (r *Role) replicator() replicator { return nil }
