// Owned by the kernel-path/napi work (issue 2).
