//! VMware streamOptimized VMDK.
