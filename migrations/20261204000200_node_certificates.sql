-- Until when a client certificate that names a node by DNS name stays
-- valid, of those that have authenticated it. Once the node is retired, its
-- name is not given to another node before then: the old certificate would
-- pass for the new node. (Certificates bound to a node's id, by a URI SAN
-- urn:keyplane:node:<id>, never can.)
alter table nodes add column certificate_valid_until timestamptz;
