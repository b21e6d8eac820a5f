/*
 * mtty_probe: drives the mtty sample driver through raw VFIO ioctls and prints
 * a JSON transcript of every call (what was asked, the return, errno, whether
 * a data fd came back, the device state after). It is the lane's reference: it
 * depends on nothing in this project, so a disagreement between it and the
 * native layer points at the native layer.
 *
 * usage: mtty_probe GROUP_A UUID_A GROUP_B UUID_B [--skip-fix]
 *   GROUP_x is /dev/vfio/N of an mtty mdev, UUID_x its name. A is the
 *   migration source, B the destination. --skip-fix says the guest kernel
 *   terminates the state walk on ERROR; without it STOP_COPY -> PRE_COPY(_P2P)
 *   is never sent, because older kernels spin forever on it.
 *
 * Exit status: 0 when every "check" record holds, 1 when one does not, 2 on
 * bad usage or when setup fails. Checks are facts read in the 6.12 sources
 * (drivers/vfio/vfio_main.c, samples/vfio-mdev/mtty.c), not guesses.
 *
 * Built on the host against the 6.12 uapi header with -D__user= (see
 * prepare.sh): the host's own linux-libc-dev is 6.1 and lacks PRE_COPY.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define NSTATES 8 /* ERROR .. PRE_COPY_P2P; 8 is one past the last */

static const char *const state_names[] = {
	"ERROR", "STOP", "RUNNING", "STOP_COPY",
	"RESUMING", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P",
};

static int nrec;
static int failures;
static int skip_fix;

static const char *state_name(unsigned s)
{
	return s < NSTATES ? state_names[s] : "INVALID";
}

static const char *errname(int e)
{
	switch (e) {
	case 0: return "";
	case EINVAL: return "EINVAL";
	case ENOTTY: return "ENOTTY";
	case ENODEV: return "ENODEV";
	case EBADF: return "EBADF";
	case ESPIPE: return "ESPIPE";
	case ENOMEM: return "ENOMEM";
	case EFAULT: return "EFAULT";
	case E2BIG: return "E2BIG";
	case EOVERFLOW: return "EOVERFLOW";
	case EBUSY: return "EBUSY";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case EEXIST: return "EEXIST";
	case ENXIO: return "ENXIO";
	case EAGAIN: return "EAGAIN";
	case EIO: return "EIO";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	default: return "E?";
	}
}

/*
 * One transcript record per line: a line-oriented JSON array diffs well and a
 * truncated run is still readable up to where it stopped.
 */
static void rec(const char *dev, const char *op, long ret, int err,
		const char *fmt, ...)
{
	va_list ap;

	printf("%s{\"i\":%d,\"dev\":\"%s\",\"op\":\"%s\",\"ret\":%ld,\"errno\":%d,\"err\":\"%s\"",
	       nrec ? ",\n" : "[\n", nrec, dev, op, ret, err, errname(err));
	if (fmt && *fmt) {
		printf(",");
		va_start(ap, fmt);
		vprintf(fmt, ap);
		va_end(ap);
	}
	printf("}");
	fflush(stdout);
	nrec++;
}

static void check(int ok, const char *what)
{
	rec("-", "check", ok ? 0 : -1, 0, "\"what\":\"%s\",\"ok\":%s", what,
	    ok ? "true" : "false");
	if (!ok)
		failures++;
}

static int xioctl(int fd, unsigned long req, void *arg)
{
	int r = ioctl(fd, req, arg);

	return r < 0 ? -errno : r;
}

/* VFIO_DEVICE_FEATURE with an explicit argsz, so short ones can be sent. */
static int feature_raw(int fd, uint32_t flags, void *payload, size_t plen,
		       uint32_t argsz)
{
	union {
		struct vfio_device_feature f;
		uint64_t align[8];
	} buf;
	int r;

	if (plen > sizeof(buf) - sizeof(buf.f))
		abort();
	memset(&buf, 0, sizeof(buf));
	buf.f.argsz = argsz;
	buf.f.flags = flags;
	if (plen)
		memcpy(buf.f.data, payload, plen);
	r = xioctl(fd, VFIO_DEVICE_FEATURE, &buf);
	if (plen)
		memcpy(payload, buf.f.data, plen);
	return r;
}

static int feature(int fd, uint32_t flags, void *payload, size_t plen)
{
	return feature_raw(fd, flags, payload, plen,
			   sizeof(struct vfio_device_feature) + plen);
}

static int get_state(int dev, unsigned *state)
{
	struct vfio_device_feature_mig_state st = { .data_fd = -1 };
	int r = feature(dev, VFIO_DEVICE_FEATURE_GET |
			VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, &st, sizeof(st));

	*state = r ? NSTATES : st.device_state;
	return r;
}

/*
 * SET the device state and record it with the state read back afterwards.
 * Returns the data fd (or -1); *res gets 0 or -errno.
 */
static int set_state(const char *name, const char *tag, int dev, unsigned to,
		     int *res)
{
	struct vfio_device_feature_mig_state st = { .device_state = to, .data_fd = -1 };
	unsigned from, after;
	int r;

	get_state(dev, &from);
	r = feature(dev, VFIO_DEVICE_FEATURE_SET |
		    VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, &st, sizeof(st));
	get_state(dev, &after);
	rec(name, "set_state", r, -r,
	    "\"tag\":\"%s\",\"from\":\"%s\",\"to\":\"%s\",\"to_raw\":%u,\"data_fd\":%s,\"state\":\"%s\"",
	    tag, state_name(from), state_name(to), to,
	    (!r && st.data_fd >= 0) ? "true" : "false", state_name(after));
	if (res)
		*res = r;
	return (!r && st.data_fd >= 0) ? st.data_fd : -1;
}

static int reset(const char *name, int dev)
{
	unsigned after;
	int r = xioctl(dev, VFIO_DEVICE_RESET, NULL);

	get_state(dev, &after);
	rec(name, "reset", r, r < 0 ? -r : 0, "\"state\":\"%s\"", state_name(after));
	return r;
}

static long read_to_eof(const char *name, int fd, uint8_t *buf, size_t cap,
			int *err)
{
	long total = 0, n;
	int reads = 0;

	*err = 0;
	while ((size_t)total < cap) {
		n = read(fd, buf + total, cap - total);
		reads++;
		if (n < 0) {
			*err = errno;
			break;
		}
		if (n == 0)
			break;
		total += n;
	}
	rec(name, "read_to_eof", *err ? -1 : total, *err, "\"bytes\":%ld,\"reads\":%d",
	    total, reads);
	return total;
}

static int precopy_info(const char *name, int fd, uint32_t argsz,
			struct vfio_precopy_info *out)
{
	struct vfio_precopy_info info = { .argsz = argsz };
	int r = xioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &info);

	rec(name, "precopy_info", r, r < 0 ? -r : 0,
	    "\"argsz\":%u,\"initial_bytes\":%llu,\"dirty_bytes\":%llu", argsz,
	    r ? 0ULL : (unsigned long long)info.initial_bytes,
	    r ? 0ULL : (unsigned long long)info.dirty_bytes);
	if (out)
		*out = info;
	return r;
}

struct dev {
	const char *name;
	int container, group, fd;
};

static int open_device(struct dev *d, const char *group_path, const char *uuid)
{
	struct vfio_group_status gs = { .argsz = sizeof(gs) };
	struct vfio_device_info info = { .argsz = sizeof(info) };
	int r;

	d->container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	rec(d->name, "open_container", d->container < 0 ? -1 : 0,
	    d->container < 0 ? errno : 0, "");
	if (d->container < 0)
		return -1;
	r = xioctl(d->container, VFIO_GET_API_VERSION, NULL);
	rec(d->name, "get_api_version", r, r < 0 ? -r : 0, "");
	check(r == VFIO_API_VERSION, "VFIO_GET_API_VERSION is VFIO_API_VERSION");
	r = ioctl(d->container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU);
	rec(d->name, "check_extension_type1v2", r, r < 0 ? errno : 0, "");
	check(r == 1, "type1v2 IOMMU is available");

	d->group = open(group_path, O_RDWR | O_CLOEXEC);
	rec(d->name, "open_group", d->group < 0 ? -1 : 0, d->group < 0 ? errno : 0, "");
	if (d->group < 0)
		return -1;
	r = xioctl(d->group, VFIO_GROUP_GET_STATUS, &gs);
	rec(d->name, "group_get_status", r, r < 0 ? -r : 0, "\"viable\":%s",
	    (gs.flags & VFIO_GROUP_FLAGS_VIABLE) ? "true" : "false");
	check(!r && (gs.flags & VFIO_GROUP_FLAGS_VIABLE), "the mdev group is viable");

	r = xioctl(d->group, VFIO_GROUP_SET_CONTAINER, &d->container);
	rec(d->name, "group_set_container", r, r < 0 ? -r : 0, "");
	r = ioctl(d->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
	rec(d->name, "set_iommu_type1v2", r, r < 0 ? errno : 0, "");
	if (r < 0)
		return -1;

	r = xioctl(d->group, VFIO_GROUP_GET_DEVICE_FD, (void *)"no-such-device");
	rec(d->name, "get_device_fd_unknown_name", r < 0 ? r : 0, r < 0 ? -r : 0, "");
	if (r >= 0)
		close(r);
	check(r < 0, "an unknown device name gets no fd");

	d->fd = xioctl(d->group, VFIO_GROUP_GET_DEVICE_FD, (void *)uuid);
	rec(d->name, "get_device_fd", d->fd < 0 ? d->fd : 0, d->fd < 0 ? -d->fd : 0, "");
	if (d->fd < 0)
		return -1;
	r = xioctl(d->fd, VFIO_DEVICE_GET_INFO, &info);
	rec(d->name, "device_get_info", r, r < 0 ? -r : 0,
	    "\"flags\":%u,\"num_regions\":%u,\"num_irqs\":%u", info.flags,
	    info.num_regions, info.num_irqs);
	/* mtty handles VFIO_DEVICE_RESET but does not advertise FLAGS_RESET. */
	check(!r && (info.flags & VFIO_DEVICE_FLAGS_PCI), "mtty is a PCI device");
	return 0;
}

static void close_device(struct dev *d)
{
	int r;

	close(d->fd);
	r = xioctl(d->group, VFIO_GROUP_UNSET_CONTAINER, NULL);
	rec(d->name, "group_unset_container", r, r < 0 ? -r : 0, "");
	close(d->group);
	close(d->container);
}

/* Feature discovery and the generic VFIO_DEVICE_FEATURE argument checks. */
static void features(struct dev *a)
{
	struct vfio_device_feature_migration mig = { 0 };
	struct vfio_device_feature_mig_data_size ds = { 0 };
	const uint32_t G = VFIO_DEVICE_FEATURE_GET, S = VFIO_DEVICE_FEATURE_SET,
		       P = VFIO_DEVICE_FEATURE_PROBE;
	int r;

	r = feature(a->fd, G | VFIO_DEVICE_FEATURE_MIGRATION, &mig, sizeof(mig));
	rec(a->name, "feature_migration_get", r, -r, "\"flags\":%llu",
	    (unsigned long long)mig.flags);
	check(!r && mig.flags == (VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P |
				  VFIO_MIGRATION_PRE_COPY),
	      "mtty reports STOP_COPY|P2P|PRE_COPY");

	r = feature(a->fd, P | G | VFIO_DEVICE_FEATURE_MIGRATION, NULL, 0);
	rec(a->name, "feature_migration_probe_get", r, -r, "");
	check(r == 0, "PROBE|GET of MIGRATION succeeds");
	r = feature(a->fd, P | S | VFIO_DEVICE_FEATURE_MIGRATION, NULL, 0);
	rec(a->name, "feature_migration_probe_set", r, -r, "");
	check(r == -EINVAL, "PROBE|SET of MIGRATION (GET-only) is EINVAL");
	r = feature(a->fd, P | G | S | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, NULL, 0);
	rec(a->name, "feature_mig_state_probe_get_set", r, -r, "");
	check(r == 0, "PROBE|GET|SET of MIG_DEVICE_STATE succeeds");

	r = feature(a->fd, G | VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, &ds, sizeof(ds));
	rec(a->name, "feature_mig_data_size_get", r, -r, "\"stop_copy_length\":%llu",
	    (unsigned long long)ds.stop_copy_length);
	check(!r && ds.stop_copy_length > 0, "MIG_DATA_SIZE is positive");

	/* argsz below the header: checked before anything else. */
	r = feature_raw(a->fd, G | VFIO_DEVICE_FEATURE_MIGRATION, &mig, sizeof(mig), 4);
	rec(a->name, "feature_argsz_below_header", r, -r, "\"argsz\":4");
	check(r == -EINVAL, "argsz below the feature header is EINVAL");
	/* Header only, no room for the payload. */
	r = feature_raw(a->fd, G | VFIO_DEVICE_FEATURE_MIGRATION, &mig, sizeof(mig),
			sizeof(struct vfio_device_feature));
	rec(a->name, "feature_argsz_no_payload", r, -r, "\"argsz\":%zu",
	    sizeof(struct vfio_device_feature));
	check(r == -EINVAL, "argsz without room for the payload is EINVAL");
	r = feature_raw(a->fd, S | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, &ds, 4,
			sizeof(struct vfio_device_feature) + 4);
	rec(a->name, "feature_mig_state_short_payload", r, -r, "\"argsz\":%zu",
	    sizeof(struct vfio_device_feature) + 4);
	check(r == -EINVAL, "a MIG_DEVICE_STATE payload shorter than the struct is EINVAL");

	r = feature(a->fd, G | 0x7777, &mig, sizeof(mig));
	rec(a->name, "feature_unknown_index", r, -r, "\"feature\":%u", 0x7777);
	check(r == -ENOTTY, "an unknown feature index is ENOTTY (mtty has no device_feature op)");
	r = feature(a->fd, G | (1u << 24) | VFIO_DEVICE_FEATURE_MIGRATION, &mig, sizeof(mig));
	rec(a->name, "feature_unknown_flag", r, -r, "\"flag\":%u", 1u << 24);
	check(r == -EINVAL, "an unknown flag bit is EINVAL");
	r = feature(a->fd, G | S | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, &mig, sizeof(mig));
	rec(a->name, "feature_get_and_set", r, -r, "");
	check(r == -EINVAL, "GET|SET without PROBE is EINVAL");
	r = feature(a->fd, VFIO_DEVICE_FEATURE_MIGRATION, &mig, sizeof(mig));
	rec(a->name, "feature_neither_get_nor_set", r, -r, "");
	check(r == -EINVAL, "neither GET nor SET nor PROBE is EINVAL");
	r = feature(a->fd, S | VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, &ds, sizeof(ds));
	rec(a->name, "feature_mig_data_size_set", r, -r, "");
	check(r == -EINVAL, "SET of MIG_DATA_SIZE (GET-only) is EINVAL");
}

/*
 * Every (from, to) pair: reset to RUNNING, walk to `from`, then ask for `to`.
 * ERROR cannot be reached on purpose, so it is only a target; 8 is one past
 * the last state.
 */
static void matrix(struct dev *a)
{
	unsigned from, to;
	int r, fd1, fd2;

	for (from = 1; from < NSTATES; from++) {
		for (to = 0; to <= NSTATES; to++) {
			if (from == VFIO_DEVICE_STATE_STOP_COPY && !skip_fix &&
			    (to == VFIO_DEVICE_STATE_PRE_COPY ||
			     to == VFIO_DEVICE_STATE_PRE_COPY_P2P)) {
				rec(a->name, "set_state_skipped", 0, 0,
				    "\"tag\":\"matrix\",\"from\":\"%s\",\"to\":\"%s\",\"why\":\"guest kernel lacks the skip-loop fix\"",
				    state_name(from), state_name(to));
				continue;
			}
			reset(a->name, a->fd);
			fd1 = set_state(a->name, "matrix-setup", a->fd, from, &r);
			if (r) {
				check(0, "the matrix could reach its source state");
				continue;
			}
			fd2 = set_state(a->name, "matrix", a->fd, to, &r);
			if (fd1 >= 0)
				close(fd1);
			if (fd2 >= 0)
				close(fd2);
		}
	}
	reset(a->name, a->fd);
}

/* PRE_COPY then STOP_COPY on one fd, the resume of it on B, and bad data. */
static void data_paths(struct dev *a, struct dev *b)
{
	uint8_t img[4096], bad[4096];
	struct vfio_precopy_info info;
	long n, whole;
	int r, err, fd, fdb, again;
	ssize_t w;

	/* STOP_COPY from RUNNING: the whole image in one go. */
	reset(a->name, a->fd);
	fd = set_state(a->name, "stop_copy", a->fd, VFIO_DEVICE_STATE_STOP_COPY, &r);
	check(fd >= 0, "RUNNING -> STOP_COPY returns a data fd");
	if (fd < 0)
		return;
	whole = read_to_eof(a->name, fd, img, sizeof(img), &err);
	n = read(fd, bad, 16);
	rec(a->name, "read_after_eof", n, n < 0 ? errno : 0, "");
	check(n == 0, "reading past the end gives EOF again");
	n = pread(fd, bad, 16, 0);
	rec(a->name, "pread", n, n < 0 ? errno : 0, "");
	check(n < 0 && errno == ESPIPE, "pread on a data fd is ESPIPE (stream)");
	w = write(fd, img, 4);
	rec(a->name, "write_saving_fd", w, w < 0 ? errno : 0, "");
	check(w < 0 && errno == EBADF, "writing a saving fd is EBADF");
	r = precopy_info(a->name, fd, sizeof(info), NULL);
	check(r == -EINVAL, "PRECOPY_INFO outside PRE_COPY is EINVAL");
	set_state(a->name, "stop_copy", a->fd, VFIO_DEVICE_STATE_STOP, &r);
	n = read(fd, bad, 16);
	rec(a->name, "read_after_stop", n, n < 0 ? errno : 0, "");
	check(n < 0 && errno == ENODEV, "the fd is dead after STOP_COPY -> STOP");
	close(fd);

	{
		struct vfio_device_feature_mig_data_size ds = { 0 };

		r = feature(a->fd, VFIO_DEVICE_FEATURE_GET |
			    VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, &ds, sizeof(ds));
		check(!r && (long)ds.stop_copy_length == whole,
		      "STOP_COPY gives exactly MIG_DATA_SIZE bytes");
	}

	/* Resume the image on B. */
	reset(b->name, b->fd);
	fdb = set_state(b->name, "resume", b->fd, VFIO_DEVICE_STATE_RESUMING, &r);
	check(fdb >= 0, "RUNNING -> RESUMING returns a data fd");
	if (fdb >= 0) {
		n = read(fdb, bad, 16);
		rec(b->name, "read_resuming_fd", n, n < 0 ? errno : 0, "");
		check(n < 0 && errno == EBADF, "reading a resuming fd is EBADF");
		w = write(fdb, img, whole);
		rec(b->name, "write", w, w < 0 ? errno : 0, "\"len\":%ld", whole);
		check(w == whole, "RESUMING accepts the whole image");
		set_state(b->name, "resume", b->fd, VFIO_DEVICE_STATE_STOP, &r);
		check(r == 0, "RESUMING -> STOP loads the image");
		set_state(b->name, "resume", b->fd, VFIO_DEVICE_STATE_RUNNING, &r);
		close(fdb);
	}

	/* PRE_COPY: the header first, the ports on STOP_COPY, on the same fd. */
	reset(a->name, a->fd);
	fd = set_state(a->name, "pre_copy", a->fd, VFIO_DEVICE_STATE_PRE_COPY, &r);
	check(fd >= 0, "RUNNING -> PRE_COPY returns a data fd");
	if (fd < 0)
		return;
	r = precopy_info(a->name, fd, sizeof(info), &info);
	check(!r && info.initial_bytes > 0 && info.dirty_bytes == 0,
	      "PRE_COPY reports initial bytes and no dirty bytes");
	r = precopy_info(a->name, fd, 8, NULL);
	check(r == -EINVAL, "PRECOPY_INFO with a short argsz is EINVAL");
	r = xioctl(fd, _IO(VFIO_TYPE, VFIO_BASE + 99), NULL);
	rec(a->name, "data_fd_unknown_ioctl", r, -r, "");
	check(r == -ENOTTY, "an unknown ioctl on the data fd is ENOTTY");
	n = read_to_eof(a->name, fd, img, sizeof(img), &err);
	check(n == (long)info.initial_bytes, "PRE_COPY yields initial_bytes, then EOF");
	r = precopy_info(a->name, fd, sizeof(info), &info);
	check(!r && info.initial_bytes == 0, "after reading, initial_bytes is 0");
	set_state(a->name, "pre_copy", a->fd, VFIO_DEVICE_STATE_PRE_COPY_P2P, &r);
	r = precopy_info(a->name, fd, sizeof(info), NULL);
	check(r == 0, "PRECOPY_INFO works in PRE_COPY_P2P");
	again = set_state(a->name, "pre_copy", a->fd, VFIO_DEVICE_STATE_STOP_COPY, &r);
	check(r == 0 && again < 0, "STOP_COPY after PRE_COPY keeps the existing fd");
	if (again >= 0)
		close(again);
	whole = n + read_to_eof(a->name, fd, img + n, sizeof(img) - n, &err);
	set_state(a->name, "pre_copy", a->fd, VFIO_DEVICE_STATE_STOP, &r);
	close(fd);

	/* The two-part image resumes on B like the one-shot one. */
	reset(b->name, b->fd);
	fdb = set_state(b->name, "resume_pre_copy", b->fd, VFIO_DEVICE_STATE_RESUMING, &r);
	if (fdb >= 0) {
		w = write(fdb, img, whole);
		rec(b->name, "write", w, w < 0 ? errno : 0, "\"len\":%ld", whole);
		set_state(b->name, "resume_pre_copy", b->fd, VFIO_DEVICE_STATE_STOP, &r);
		check(r == 0, "the PRE_COPY + STOP_COPY image loads");
		close(fdb);
	}

	/* Bad resume data. */
	reset(b->name, b->fd);
	fdb = set_state(b->name, "resume_bad_magic", b->fd, VFIO_DEVICE_STATE_RESUMING, &r);
	if (fdb >= 0) {
		memcpy(bad, img, whole);
		bad[0] ^= 0xff; /* the magic leads the image */
		w = write(fdb, bad, whole);
		rec(b->name, "write", w, w < 0 ? errno : 0, "\"len\":%ld,\"corrupt\":\"magic\"", whole);
		check(w < 0, "an image with a bad magic is refused");
		set_state(b->name, "resume_bad_magic", b->fd, VFIO_DEVICE_STATE_STOP, &r);
		close(fdb);
	}
	reset(b->name, b->fd);
	fdb = set_state(b->name, "resume_short", b->fd, VFIO_DEVICE_STATE_RESUMING, &r);
	if (fdb >= 0) {
		w = write(fdb, img, 10);
		rec(b->name, "write", w, w < 0 ? errno : 0, "\"len\":10");
		set_state(b->name, "resume_short", b->fd, VFIO_DEVICE_STATE_STOP, &r);
		check(r == -EINVAL, "RESUMING -> STOP with a short image is EINVAL");
		close(fdb);
	}
	reset(b->name, b->fd);
	fdb = set_state(b->name, "resume_too_long", b->fd, VFIO_DEVICE_STATE_RESUMING, &r);
	if (fdb >= 0) {
		w = write(fdb, img, whole + 1);
		rec(b->name, "write", w, w < 0 ? errno : 0, "\"len\":%ld", whole + 1);
		check(w < 0 && errno == ENOMEM, "more than the image size is ENOMEM");
		close(fdb);
	}
	reset(b->name, b->fd);

	/* Reset in PRE_COPY: back to RUNNING, the fd dies. */
	fd = set_state(a->name, "reset_in_pre_copy", a->fd, VFIO_DEVICE_STATE_PRE_COPY, &r);
	reset(a->name, a->fd);
	if (fd >= 0) {
		n = read(fd, bad, 16);
		rec(a->name, "read_after_reset", n, n < 0 ? errno : 0, "");
		check(n < 0 && errno == ENODEV, "a reset kills the data fd");
		close(fd);
	}
}

static void dma_logging(struct dev *a)
{
	struct vfio_device_feature_dma_logging_range ranges[2] = {
		{ .iova = 0, .length = 1 << 20 },
		{ .iova = 1 << 20, .length = 1 << 20 },
	};
	struct vfio_device_feature_dma_logging_control ctl;
	struct vfio_device_feature_dma_logging_report rep;
	uint64_t bitmap[8];
	const uint32_t S = VFIO_DEVICE_FEATURE_SET, G = VFIO_DEVICE_FEATURE_GET,
		       P = VFIO_DEVICE_FEATURE_PROBE;
	int r;
	size_t i;
	int clean;
	const char *iova;

	r = feature(a->fd, P | S | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, NULL, 0);
	rec(a->name, "dma_logging_probe_start", r, -r, "");
	check(r == 0, "DMA logging is supported (PROBE|SET START)");
	r = feature(a->fd, P | G | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, NULL, 0);
	rec(a->name, "dma_logging_probe_report", r, -r, "");

	ctl = (struct vfio_device_feature_dma_logging_control){
		.page_size = 4096, .num_ranges = 0, .ranges = (uintptr_t)ranges };
	r = feature(a->fd, S | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, &ctl, sizeof(ctl));
	rec(a->name, "dma_logging_start_no_ranges", r, -r, "");
	check(r == -EINVAL, "DMA logging with no ranges is EINVAL");
	ranges[1].iova = 4096 + 1;
	ctl.num_ranges = 2;
	r = feature(a->fd, S | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, &ctl, sizeof(ctl));
	rec(a->name, "dma_logging_start_unaligned", r, -r, "");
	check(r == -EINVAL, "an unaligned range is EINVAL");
	ranges[1].iova = 4096;
	r = feature(a->fd, S | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, &ctl, sizeof(ctl));
	rec(a->name, "dma_logging_start_overlap", r, -r, "");
	check(r == -EINVAL, "overlapping ranges are EINVAL");
	ranges[1].iova = 1 << 20;
	r = feature(a->fd, S | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, &ctl, sizeof(ctl));
	rec(a->name, "dma_logging_start", r, -r, "\"page_size\":%llu",
	    (unsigned long long)ctl.page_size);
	check(r == 0, "DMA logging starts on two ranges");

	memset(bitmap, 0xa5, sizeof(bitmap));
	rep = (struct vfio_device_feature_dma_logging_report){
		.iova = 0, .length = 2 << 20, .page_size = 4096, .bitmap = (uintptr_t)bitmap };
	r = feature(a->fd, G | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, &rep, sizeof(rep));
	clean = 1;
	for (i = 0; i < sizeof(bitmap) / sizeof(bitmap[0]); i++)
		clean &= bitmap[i] == 0xa5a5a5a5a5a5a5a5ULL;
	rec(a->name, "dma_logging_report", r, -r, "\"bitmap_untouched\":%s",
	    clean ? "true" : "false");
	/*
	 * The report walks the user bitmap with iova_bitmap, which is a stub
	 * returning EOPNOTSUPP unless the kernel has CONFIG_IOMMUFD_DRIVER
	 * (Debian's 6.12 does not). prepare.sh reads the config and says which.
	 */
	iova = getenv("KERNEL_LANE_IOVA_BITMAP");
	if (iova && !strcmp(iova, "1"))
		check(r == 0, "a DMA logging report succeeds (CONFIG_IOMMUFD_DRIVER=y)");
	else if (iova && !strcmp(iova, "0"))
		check(r == -EOPNOTSUPP, "a DMA logging report is EOPNOTSUPP without CONFIG_IOMMUFD_DRIVER");
	else
		check(r == 0 || r == -EOPNOTSUPP, "a DMA logging report succeeds or is EOPNOTSUPP");
	rep.page_size = 1000;
	r = feature(a->fd, G | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, &rep, sizeof(rep));
	rec(a->name, "dma_logging_report_bad_page_size", r, -r, "\"page_size\":1000");
	check(r == -EINVAL, "a report page size below 4K or not a power of 2 is EINVAL");
	rep.page_size = 4096;
	rep.iova = ~0ULL - 4095;
	r = feature(a->fd, G | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, &rep, sizeof(rep));
	rec(a->name, "dma_logging_report_overflow", r, -r, "");
	check(r == -EOVERFLOW, "a report range that wraps is EOVERFLOW");

	r = feature(a->fd, S | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, NULL, 0);
	rec(a->name, "dma_logging_stop", r, -r, "");
	check(r == 0, "DMA logging stops");
	r = feature(a->fd, G | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, NULL, 0);
	rec(a->name, "dma_logging_stop_get", r, -r, "");
	check(r == -EINVAL, "GET of DMA_LOGGING_STOP (SET-only) is EINVAL");
}

int main(int argc, char **argv)
{
	struct dev a = { .name = "A" }, b = { .name = "B" };

	if (argc < 5 || (argc == 6 && strcmp(argv[5], "--skip-fix")) || argc > 6) {
		fprintf(stderr, "usage: %s GROUP_A UUID_A GROUP_B UUID_B [--skip-fix]\n", argv[0]);
		return 2;
	}
	skip_fix = argc == 6;

	if (open_device(&a, argv[1], argv[2]) || open_device(&b, argv[3], argv[4])) {
		printf("\n]\n");
		fprintf(stderr, "mtty_probe: device setup failed (see the transcript)\n");
		return 2;
	}
	features(&a);
	matrix(&a);
	data_paths(&a, &b);
	dma_logging(&a);
	reset(a.name, a.fd);
	close_device(&a);
	close_device(&b);
	printf("\n]\n");
	fprintf(stderr, "mtty_probe: %d records, %d failed checks\n", nrec, failures);
	return failures ? 1 : 0;
}
