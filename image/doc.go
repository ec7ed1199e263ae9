// Package image is pirun's content-addressed image store.
//
// Layout under the store root (default /var/lib/pirun):
//
//	oci/            an OCI image layout holding every blob by digest
//	                (written through containers/image, verified on write)
//	layers/<id>/    each layer unpacked once, keyed by a short prefix of its
//	                chain ID, with whiteouts converted for overlayfs; never
//	                written again after the atomic rename that publishes it
//	empty/          an empty directory stacked on top of the lowerdirs, since
//	                a single lowerdir without upperdir is refused by overlayfs
//	images.json     names → image records, written atomically
//	lock            flock serializing writers across pirun processes
//
// The store never mounts anything: [Store.RootfsMount] returns the overlay
// mount spec that the runtime mounts inside each container's own mount
// namespace (the habit of containerd's overlay snapshotter).
//
// image never imports runtime or network (a test pins it).
package image
