"""Generated from protos/etcd/ (etcd's own API) by tools/gen_protos.py; never edited by hand."""
