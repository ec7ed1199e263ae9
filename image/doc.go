// Package image is pirun's content-addressed image store.
//
// Layout under the store root (default /var/lib/pirun):
//
//	oci/            an OCI image layout holding the manifests and configs
//	                by digest (copied by containers/image, which verifies
//	                each blob; oci-put-blob* are blobs being written), but
//	                no layer blob: layers are kept unpacked only; its
//	                index.json lists each imported manifest once, unnamed
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
//	registries.conf registry settings, containers-registries.conf(5) v2:
//	                insecure (plain HTTP) registries, mirrors, blocked
//	                registries; the only registry configuration read
//	                (never /etc/containers); missing means empty
//
// Names are normalized like Docker's ("busybox" is
// "docker.io/library/busybox:latest"); [FamiliarName] gives the short form
// back for display.
//
// [Store.Pull] fetches from registries (containers/image's docker
// transport; credentials from the Docker config as containers/image reads
// them) and from archives ([Store.Import] is Pull limited to archives). It
// first resolves the reference to one image manifest (the host's platform,
// or [WithPlatform], from an index); an image whose manifest the store
// already holds is recorded without any blob transfer. Otherwise the pull
// reads the image's config and containers/image copies the image from the
// source opened to resolve (one ping and one manifest request to a
// registry, one extraction of an archive): manifest and config into oci/,
// each layer blob (verified) straight into the unpacker while it
// downloads, and no layer blob the store holds unpacked under the same
// chain ID (stream.go). The config's diff_ids then check and publish the
// trees. containers/image's on-disk
// blob info cache is replaced by its in-memory one, so a pull writes
// nothing outside the root.
//
// Pull holds the lock from opening the source to the record: the OCI
// layout's index.json is not safe for concurrent writers, a layer is
// unpacked by one process only, and a second pull of the same image finds
// it held. Pulls of different images serialize too; on a Pi the network or
// the SD card is the limit, not the lock. [Store.Remove] drops a name;
// [Store.Prune] removes the blobs and layer directories no record (and no
// [WithKeep] manifest, the images of existing containers) references.
// Readers ([Store.Lookup], [Store.List]) take no lock: images.json is
// replaced atomically. Unpacking needs root (files are chowned to the
// image's owners, whiteouts are character devices).
//
// After a crash, a published layer directory is complete and an image
// record refers only to what is on disk. A pull writes its files without
// an fsync each (a layer has hundreds, and every fsync is a flush of the
// disk's cache: 440 files took 250-400 ms one after the other, 120 ms from
// 16 goroutines, against 15-30 ms for one syncfs on the test VM). The
// store writes the blobs itself too, without the fsync per blob of
// containers/image's layout destination (which fsyncs neither the
// directory a blob is renamed into, nor the manifest, nor index.json).
// Each layer streamed in is followed by a syncfs of the store's file
// system, which writes it back while the other layers still download; once
// every layer of the image is unpacked and checked, a last syncfs makes
// all of it durable. Only then are the
// layers/.tmp-* directories renamed to their layer directories and
// layers/ fsynced, and only then is images.json replaced (written to a
// temp file, fsynced, renamed, its directory fsynced). A crash before the
// renames leaves .tmp-* directories and oci-put-blob* files, which the
// next pull removes; a crash between the renames and the record leaves
// complete layers that no record uses yet, which the next pull of the
// image finds (and [Store.Prune] removes). A syncfs also waits for
// whatever else is being written to the same file system; the ones per
// layer run while the pull still downloads, so only the last one delays
// it.
//
// Layers are unpacked by the store's own extractor (extract.go), which
// replaced umoci's: a layer goes into a fresh, empty directory of its own,
// so what is at each path is known without asking the file system, and
// entries are made relative to directory descriptors opened with
// O_NOFOLLOW from the tree, so no symlink is ever followed. Each tar header
// is checked first: a layer that tries to leave its directory (an absolute
// path, "..", a path through a symlink it created, a hard link through
// one) is refused with [ErrInvalidLayer], and so is a device node
// (containers get their devices from the runtime). Whiteouts are converted
// for overlayfs; a test checks the trees match what umoci made. Gzip
// layers are decompressed by one goroutine each, not by containers/image's
// parallel reader (4 MiB of read-ahead per layer, on a machine where every
// new page costs).
//
// The store never mounts anything: [Store.RootfsMount] returns the overlay
// mount spec that the runtime mounts inside each container's own mount
// namespace (the habit of containerd's overlay snapshotter).
//
// image never imports runtime or network (a test pins it).
package image
