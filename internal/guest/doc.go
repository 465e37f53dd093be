// Package guest is the machinery of the guest-kernel test lane: tests of
// kernel features the host kernel lacks (802.1Q VLANs, bridge
// vlan_filtering, sch_netem) run inside a QEMU guest booted with Debian's
// cloud kernel.
//
// The pieces, in the order the lane (internal/guest/lane) uses them:
//
//   - FetchKernel downloads linux-image-<abi>-cloud-amd64-unsigned with
//     apt-get download and unpacks it with dpkg -x into a versioned cache
//     directory (never installing it).
//   - ResolveModules collects the .ko files a guest needs with their
//     dependencies, read from each module's .modinfo (no depmod).
//   - FindTools and ToolClosure collect the host's witness tools (ip,
//     bridge, tc, ping, nft) with the shared libraries ldd reports.
//   - WriteImage packs the static Go /init (internal/guest/guestinit), its
//     Config, the modules, the tools and the test binaries into a newc
//     initramfs written by CPIOWriter.
//   - ChooseAccel picks KVM when a probe guest boots under it, else TCG, and
//     VM.Run boots QEMU with the serial console streamed line by line; the
//     guest reports its verdict through isa-debug-exit.
//   - Report parses the -test.v output on the console into per-test results.
//
// This is test machinery: it shells out to apt-get, dpkg, ldd and QEMU, which
// the network product never does. See docs/guest-lane.md.
package guest
