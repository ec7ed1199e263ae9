// Package image is pirun's content-addressed image store.
//
// Layout under the store root (default /var/lib/pirun):
//
//	oci/            an OCI image layout holding every blob by digest
//	                (written through containers/image, verified on write);
//	                its index.json lists each imported manifest once, unnamed
//	layers/<id>/    each layer unpacked once, keyed by the first 16 hex
//	                digits of its chain ID; never written again after the
//	                atomic rename that publishes it:
//	  layer.json      {"chain_id", "diff_id", "size"}: the full chain ID
//	                  detects a prefix collision
//	  root/           the unpacked tree, whiteouts converted for overlayfs:
//	                  the directory that goes into lowerdir
//	layers/.tmp-*   a layer being unpacked (removed on failure, and by the
//	                next import after a crash)
//	empty/          an empty directory stacked on top of the lowerdirs, since
//	                a single lowerdir without upperdir is refused by overlayfs;
//	                mode 0755, as the container's / takes its attributes
//	tmp/            containers/image's scratch space (an extracted archive)
//	images.json     names → image records, written atomically
//	lock            flock serializing writers across pirun processes
//
// Names are normalized like Docker's ("busybox" is
// "docker.io/library/busybox:latest"); [FamiliarName] gives the short form
// back for display.
//
// [Store.Import] holds the lock for the whole import: the OCI layout's
// index.json is not safe for concurrent writers, and a layer is unpacked
// by one process only. Readers ([Store.Lookup], [Store.List]) take no lock:
// images.json is replaced atomically. Unpacking needs root (files are
// chowned to the image's owners, whiteouts are character devices).
//
// Layers are unpacked with umoci, entry by entry, after a check of each
// tar header: umoci confines paths to the layer directory on its own, but
// a layer that tries to leave it (an absolute path, "..", a path through a
// symlink it created) is refused with [ErrInvalidLayer] rather than
// silently confined.
//
// The store never mounts anything: [Store.RootfsMount] returns the overlay
// mount spec that the runtime mounts inside each container's own mount
// namespace (the habit of containerd's overlay snapshotter).
//
// image never imports runtime or network (a test pins it).
package image
