pub use vfio_uapi;
