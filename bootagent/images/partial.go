package images

import "path/filepath"

// A replica filled in pieces from a peer (bootagent/replication) keeps a
// partial file and a record of how far it got in the image's directory, so
// that a transfer resumes after a restart of the agent: Sweep keeps them
// (their names are none of its temporary names), Remove deletes them with
// the replica.
const (
	partialPrefix = ".replica-"
	partialSuffix = ".part"
	// PartialRecordSuffix follows the partial file's name in its record's
	// name; the record is written through the record's name plus ".tmp".
	PartialRecordSuffix = ".json"
)

// PartialName is the name of the partial file of the replica uid in its
// image's directory.
func PartialName(uid string) string { return partialPrefix + uid + partialSuffix }

// partials are the partial transfer's files of a replica.
func (s *Store) partials(namespace, name, uid string) []string {
	p := filepath.Join(filepath.Dir(s.Path(namespace, name, uid)), PartialName(uid))
	return []string{p, p + PartialRecordSuffix, p + PartialRecordSuffix + ".tmp"}
}
