// Owned by the KVM work (issue 6).
