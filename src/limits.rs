//! Every limit and tuning knob in one place: the bounds hostile input
//! meets, the buffer sizes and queue depths that set the memory of a
//! transfer, and the server's timeouts. Every parser and stage takes its
//! numbers from here, so the worst case of a transfer is read in one file.
//!
//! # Memory per transfer
//!
//! What one import or upload holds at most, whatever the image size:
//!
//! | stage | bound |
//! |---|---|
//! | source reads | [`READ_CHUNK`] per read, [`READ_AHEAD`] of them read ahead (HTTP body frames: [`READ_BUFFER`]) |
//! | decompressed package | [`DECOMPRESSED_CHUNK`], plus the xz/zstd window ≤ [`MAX_DECOMPRESSOR_WINDOW`] |
//! | digests | (`DIGEST_QUEUE` + 2) × [`DIGEST_BATCH`] shared, plus held small entries ≤ [`MAX_DIGEST_HELD_TOTAL`] |
//! | OVF and manifests | [`MAX_OVF_SIZE`] + [`MAX_MANIFESTS_SIZE`] |
//! | gzip disk | inflated output of [`GZIP_INPUT_SLICE`] input at a time |
//! | VMDK grains | [`MAX_VMDK_COMPRESSED_GRAIN`] + [`MAX_GRAIN_SIZE`]; directory ≤ 8 × [`MAX_VMDK_GD_ENTRIES`] |
//! | qcow2 stream | compressed clusters ≤ [`MAX_QCOW2_COMPRESSED_BUFFERED`]; pending reads ≤ [`MAX_QCOW2_PENDING`] × ~64 B; tables past their data go to a spool file, read back [`SPOOL_READBACK_CHUNK`] at a time |
//! | VHD/VDI | block positions ≤ 8 × [`MAX_MAPPED_BLOCKS`] |
//! | server responses | `data.queue_depth` × `data.buffer_size` (defaults 4 × 1 MiB) |
//!
//! The limits a parser can hit only with hostile or broken input (a
//! directory of millions of entries) are far above what real images need;
//! the usual case (VMDK from ovftool, qcow2 from qemu-img) stays under
//! 32 MiB per transfer.

use std::time::Duration;

// ---------------------------------------------------------------------
// Bounds on what hostile input controls
// ---------------------------------------------------------------------

/// Largest OVF descriptor accepted (bytes).
pub const MAX_OVF_SIZE: u64 = 4 << 20;
/// Largest manifest (`.mf`) accepted (bytes).
pub const MAX_MANIFEST_SIZE: u64 = 1 << 20;
/// Largest size of every manifest of a package together (bytes): a
/// package may carry one per disk, and each is kept until the end.
pub const MAX_MANIFESTS_SIZE: u64 = 4 << 20;
/// Largest certificate (`.cert`) kept for inspection (bytes).
pub const MAX_CERT_SIZE: u64 = 1 << 20;
/// Largest PAX extended header (`x`/`g` entry) accepted (bytes).
pub const MAX_PAX_SIZE: u64 = 64 << 10;
/// Largest GNU long name / long link (`L`/`K` entry) accepted (bytes).
pub const MAX_LONG_NAME: u64 = 4096;
/// Most tar entries (or zip members) accepted in one package.
pub const MAX_ENTRIES: usize = 10_000;
/// Most disks (files) in one OVF.
pub const MAX_OVF_FILES: usize = 1024;
/// Deepest XML element nesting accepted in an OVF.
pub const MAX_XML_DEPTH: usize = 64;
/// Largest virtual disk accepted (bytes): 64 TiB.
pub const MAX_CAPACITY: u64 = 64 << 40;
/// Most inflated bytes a gzip-compressed disk entry may hold for a disk of
/// `capacity` bytes: the disk, and the image format around it (qcow2
/// tables, VHD bitmaps and footers, VDI block maps), which takes less than
/// 1/32 of the disk plus 16 MiB; a decompression bomb is cut off there.
pub const fn gzip_inflated_cap(capacity: u64) -> u64 {
    capacity
        .saturating_add(capacity / 32)
        .saturating_add(16 << 20)
}
/// Largest VMDK grain accepted (bytes): 1 MiB (the spec's default is 64 KiB).
pub const MAX_GRAIN_SIZE: u64 = 1 << 20;
/// Largest compressed VMDK grain marker payload accepted (bytes).
pub const MAX_VMDK_COMPRESSED_GRAIN: u64 = 2 << 20;
/// Most entries per VMDK grain table (qemu's own limit; VMware and qemu-img
/// write 512). Also bounds the grains a stream decoder holds until the grain
/// table that maps them arrives.
pub const MAX_VMDK_GTES_PER_GT: u32 = 512;
/// Largest VMDK grain directory accepted (entries): 16 MiB of directory,
/// enough for [`MAX_CAPACITY`] with 64 KiB grains (8 TiB with 4 KiB
/// grains). A streamOptimized directory read from the header area
/// (qemu-img's layout) is kept in memory; one at the end of a stream, and
/// a monolithicSparse directory, are read as they pass.
pub const MAX_VMDK_GD_ENTRIES: u64 = 4 << 20;
/// Largest embedded descriptor of a monolithicSparse VMDK (bytes): it is
/// held in memory to look for a parent disk. qemu-img, VirtualBox and
/// VMware write 10 KiB.
pub const MAX_VMDK_DESCRIPTOR: u64 = 64 << 10;
/// Most outstanding structures a monolithicSparse decoder tracks at once:
/// grain tables and runs of grains (contiguous in file and disk) that the
/// tables mapped ahead of the stream, about 64 bytes each. A disk written
/// by qemu-img needs one per run of data.
pub const MAX_VMDK_SPARSE_PENDING: usize = 1 << 20;
/// Most allocated blocks a VHD BAT or a VDI block map may name. Their file
/// positions are held (8 bytes each, 32 MiB at most) from the table until
/// the blocks have streamed by: 8 TiB of data in VHD's usual 2 MiB blocks
/// (beyond VHD's own 2040 GiB), 4 TiB in VDI's 1 MiB blocks.
pub const MAX_MAPPED_BLOCKS: usize = 4 << 20;
/// Largest qcow2 cluster accepted (bytes): 2 MiB, qcow2's own maximum.
pub const MAX_QCOW2_CLUSTER: u64 = 2 << 20;
/// Largest qcow2 L1 table accepted (entries): 32 MiB of table.
pub const MAX_QCOW2_L1_ENTRIES: u64 = 4 << 20;
/// Largest qcow2 header area accepted (bytes), including extensions.
pub const MAX_QCOW2_HEADER: u64 = 64 << 10;
/// Size of the chunks read from a source.
pub const READ_CHUNK: usize = 1 << 20;
/// Chunks read ahead of the import, on the reading thread
/// ([`crate::source::read_ahead::ReadAhead`]).
pub const READ_AHEAD: usize = 4;
/// Package bytes gathered before they are handed to the digest threads
/// together: pieces as small as HTTP body frames would otherwise cost a
/// channel send and a thread wake-up each, per algorithm.
pub const DIGEST_BATCH: usize = 1 << 20;
/// Batches queued per digest thread before the pipeline waits for the
/// slowest algorithm. The batches are shared, not copied, so the package
/// bytes held for digests stay under (`DIGEST_QUEUE` + 2) × [`DIGEST_BATCH`].
pub const DIGEST_QUEUE: usize = 4;
/// Largest entry (besides the OVF descriptor and the manifest) the digest
/// threads keep whole and hash at the end in the algorithms the manifest
/// names for it, rather than in every algorithm while it streams (bytes).
pub const MAX_DIGEST_HELD_ENTRY: u64 = 64 << 10;
/// Most bytes of such entries kept per package.
pub const MAX_DIGEST_HELD_TOTAL: u64 = 1 << 20;
/// Most decompressed bytes a compressed package (gzip, xz, zstd) or a
/// deflated zip member hands on at once: what decompression buffers,
/// however much the input expands.
pub const DECOMPRESSED_CHUNK: usize = 256 << 10;
/// Most memory a package's xz or zstd decoder may take for its dictionary
/// or window (bytes): what `xz -9` (64 MiB dictionary) and zstd's own
/// decoder default (`--long`, a 128 MiB window) need. A stream that needs
/// more is refused, not decoded.
pub const MAX_DECOMPRESSOR_WINDOW: u64 = 128 << 20;
/// Most decompressed bytes accepted after the end-of-archive marker of a
/// compressed tar package (bytes): room for tar's record padding. Past it,
/// a small compressed tail could expand into unbounded work that no entry
/// or capacity limit counts.
pub const MAX_AFTER_TAR_END: u64 = 16 << 20;
/// Longest zip member name accepted (bytes), as for tar long names.
pub const MAX_ZIP_NAME: usize = 4096;
/// Most outstanding reads a qcow2 stream decoder tracks at once (L2 tables
/// and runs of data clusters mapped but not yet reached, spooled ranges).
pub const MAX_QCOW2_PENDING: usize = 1 << 20;
/// Most bytes of compressed qcow2 clusters a stream decoder buffers at once.
pub const MAX_QCOW2_COMPRESSED_BUFFERED: u64 = 16 << 20;
/// Most images in a qcow2 backing chain opened for export (the top image
/// included); a longer chain is refused as a probable loop.
pub const MAX_BACKING_CHAIN: usize = 16;
/// Longest ticket `timeout` or `inactivity_timeout` accepted (seconds): 30 days.
pub const MAX_TICKET_TIMEOUT: u64 = 30 * 24 * 3600;
/// Longest ticket id accepted (bytes).
pub const MAX_TICKET_ID_LEN: usize = 256;
/// Tickets held at once, expired ones not counted. Each is kept in memory
/// and journaled in the state directory, so this bounds both; an engine
/// removes a ticket once its transfer is done, and a few thousand is far
/// more than one host moves at once.
pub const MAX_TICKETS: usize = 4096;
/// Largest journal record read back at start-up (bytes): a ticket body is
/// at most 1 MiB, plus its resolved paths; a job's summary is smaller.
pub const MAX_JOURNAL_RECORD: u64 = 4 << 20;

// ---------------------------------------------------------------------
// Buffers and queues
// ---------------------------------------------------------------------

/// Pipe buffer asked for when reading from a pipe: fewer, larger reads.
pub const PIPE_SIZE: usize = 1 << 20;
/// hyper's per-connection read buffer. Body frames are at most this
/// large; 16 KiB frames cost three times the CPU of 256 KiB ones per byte
/// uploaded (measured: 2.9 against 1.0 CPU-s per GiB over TLS). Request
/// heads are held to `data.max_header_bytes` separately.
pub const READ_BUFFER: usize = 256 << 10;
/// Bytes of a data connection's socket read at once, beneath TLS.
pub const TCP_READ_BUFFER: usize = 64 << 10;
/// HTTP/2 flow-control window of one request body (the data a client may
/// send ahead of the server's reading). hyper's default, 1 MiB, holds an
/// upload to 1 MiB per round trip: 100 MB/s at 10 ms. 4 MiB keeps 400
/// MB/s at 10 ms and 40 MB/s at 100 ms. The window is memory: what a
/// client sends ahead is held until the import takes it, per stream being
/// uploaded (measured: 16 MiB windows put an HTTP/2 import at 80 MiB
/// peak RSS against 42 MiB over HTTP/1.1).
pub const H2_STREAM_WINDOW: u32 = 4 << 20;
/// HTTP/2 flow-control window of a whole connection: room for two
/// streams at full window.
pub const H2_CONNECTION_WINDOW: u32 = 8 << 20;
/// The largest HTTP/2 frame the server accepts: larger frames cost less
/// per byte to parse (the RFC's limit is 16 MiB, its default 16 KiB).
pub const H2_MAX_FRAME: u32 = 1 << 20;
/// Bytes of a response the HTTP/2 connection buffers per stream (a
/// download) ahead of the client's window.
pub const H2_SEND_BUFFER: usize = 2 << 20;
/// Streams one HTTP/2 connection may have open at once: a browser
/// uploads and polls over one connection; more is not needed.
pub const H2_MAX_STREAMS: u32 = 64;
/// Compressed input is fed to the inflater in slices this large, which
/// bounds the inflated bytes held at once (deflate expands at most ~1032×).
pub const GZIP_INPUT_SLICE: usize = 8 << 10;
/// Chunk size for reading spooled tables and clusters back.
pub const SPOOL_READBACK_CHUNK: u64 = 1 << 20;
/// Bytes copied per read from an encoder.
pub const EXPORT_COPY_CHUNK: usize = 1 << 20;
/// Output buffer: large sequential writes.
pub const EXPORT_OUT_BUFFER: usize = 1 << 20;
/// Output buffer of the gzip inflater of a disk entry (bytes).
pub const GZIP_OUTPUT_BUFFER: usize = 64 << 10;

// ---------------------------------------------------------------------
// Server requests and timeouts
// ---------------------------------------------------------------------

/// Largest control request body.
pub const MAX_CONTROL_BODY: usize = 1 << 20;
/// How long a control client may pause while sending a body.
pub const CONTROL_BODY_IDLE: Duration = Duration::from_secs(30);
/// Largest `PATCH` message.
pub const MAX_PATCH_BODY: usize = 4096;
/// Most of a refused request body read and thrown away, so that the
/// client (a browser still sending) reads the error response instead of a
/// connection reset.
pub const DRAIN_LIMIT: u64 = 64 << 20;
/// How long a refused body is read at most.
pub const DRAIN_TIME: Duration = Duration::from_secs(30);
/// How often a waiting read looks at its cancellation flag.
pub const CANCEL_POLL: Duration = Duration::from_millis(250);
/// How long open connections may take to finish after a shutdown request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a `PATCH` body may pause when its ticket has no inactivity
/// timeout of its own.
pub const PATCH_BODY_IDLE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------
// Resumable uploads
// ---------------------------------------------------------------------

/// Pieces smaller than this on average (HTTP/2 frames) are held and
/// joined before the import takes them (see `Batch::coalesce`); larger
/// ones (HTTP/1.1 reads) go as they are.
pub const UPLOAD_MIN_PIECE: usize = 128 << 10;
/// How much of small pieces is held and joined into one.
pub const UPLOAD_JOINED: u64 = 1 << 20;
/// Longest a held small piece waits for more before the import takes it:
/// a client that pauses mid-body still sees its offset move.
pub const UPLOAD_HOLD_WAIT: Duration = Duration::from_millis(20);
/// How often the watcher of a session looks at its ticket and pause.
pub const UPLOAD_WATCH_TICK: Duration = Duration::from_millis(250);
/// The longest `Upload-Metadata` kept (echoed by `HEAD`).
pub const MAX_TUS_METADATA: usize = 4096;
/// How long a tus `DELETE` waits for the import to let go of its targets.
pub const TUS_TERMINATE_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------
// NBD volumes
// ---------------------------------------------------------------------

/// Largest payload of one NBD option reply accepted during the handshake
/// (bytes).
pub const MAX_NBD_OPTION_REPLY: u32 = 64 << 10;
/// Most replies to one NBD option (meta contexts, infos) accepted.
pub const MAX_NBD_OPTION_REPLIES: usize = 256;
/// Largest NBD READ or WRITE payload sent or asked for (bytes): the
/// protocol's safe default, lowered further by the server's own maximum.
pub const MAX_NBD_PAYLOAD: u32 = 32 << 20;
/// Largest NBD BLOCK_STATUS reply chunk accepted (bytes): qemu sends at
/// most 128 Ki extents (1 MiB) per context.
pub const MAX_NBD_STATUS_PAYLOAD: u64 = 2 << 20;
/// Longest range one NBD BLOCK_STATUS asks about (bytes).
pub const MAX_NBD_STATUS_REQUEST: u64 = 1 << 31;
/// Longest range one NBD WRITE_ZEROES covers (bytes).
pub const MAX_NBD_ZERO_REQUEST: u64 = 1 << 30;
/// Most connections to one NBD export that allows several.
pub const MAX_NBD_CONNECTIONS: usize = 4;
/// How long connecting to an NBD server and its handshake may take.
pub const NBD_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a further connection to an NBD export, made when every one
/// is busy, may take to be answered; one that is not ends the pool's
/// growth (the server's limit of clients is reached).
pub const NBD_EXTRA_CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an NBD server may stay silent on a request before the
/// connection is given up (a flush of a large cache can take minutes).
pub const NBD_IO_TIMEOUT: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------
// Remote volumes (imageio data APIs on other hosts)
// ---------------------------------------------------------------------

/// Bytes one PUT to a remote volume carries, and one GET asks for.
pub const REMOTE_REQUEST: usize = 2 << 20;
/// PUTs an import keeps in flight to one remote volume (fewer when the
/// remote's `max_writers` says so). With [`REMOTE_QUEUE`] and the
/// gathering buffer, an import holds at most
/// `(REMOTE_MAX_WRITERS + REMOTE_QUEUE + 2) × REMOTE_REQUEST` (16 MiB)
/// per remote disk.
pub const REMOTE_MAX_WRITERS: usize = 4;
/// Full requests waiting for a free writer, per remote disk.
pub const REMOTE_QUEUE: usize = 1;
/// Times a request whose connection failed is sent again (the range is
/// still held) before the transfer fails.
pub const REMOTE_RETRIES: u32 = 3;
/// How long connecting to a remote (TCP and TLS) may take.
pub const REMOTE_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a remote may leave one request unanswered or stall a body
/// (a flush of a large write-back cache takes a while).
pub const REMOTE_IO_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest `OPTIONS` answer, and the most of an error answer's text kept.
pub const MAX_REMOTE_SMALL_BODY: u64 = 64 << 10;
/// Largest `extents` answer accepted (about 500,000 extents).
pub const MAX_REMOTE_EXTENTS_BODY: u64 = 32 << 20;

// ---------------------------------------------------------------------
// Packages from URLs and to object storage
// ---------------------------------------------------------------------

/// Redirects a package source may answer before the package.
pub const SOURCE_MAX_REDIRECTS: u32 = 5;
/// How long one read of a package source may wait for bytes before the
/// connection counts as dropped (and the download resumes).
pub const SOURCE_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// S3's smallest part (all but the last).
pub const S3_MIN_PART: u64 = 5 << 20;
/// S3's largest part.
pub const S3_MAX_PART: u64 = 5 << 30;
/// S3's most parts in one multipart upload.
pub const S3_MAX_PARTS: u64 = 10_000;
/// The part size of an export to object storage unless the archive needs
/// larger ones (to stay within [`S3_MAX_PARTS`]) or one is given.
pub const S3_DEFAULT_PART: u64 = 8 << 20;
/// Parts being uploaded at once, each held in memory until its upload
/// ends; with the one being filled, memory is this plus one part.
pub const S3_PARTS_IN_FLIGHT: usize = 2;
/// How long a presigned GET of an `s3://` source stays valid: enough to
/// resume a long import.
pub const S3_PRESIGN_VALIDITY: Duration = Duration::from_secs(24 * 3600);

// ---------------------------------------------------------------------
// `ovaio upload` and `ovaio download`
// ---------------------------------------------------------------------

/// Attempts in a row that move no byte forward before a client gives up.
pub const CLIENT_ATTEMPTS: u32 = 10;
/// The first wait before another attempt; it doubles up to
/// [`CLIENT_BACKOFF_MAX`].
pub const CLIENT_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
pub const CLIENT_BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Bytes of a package read from a pipe kept after they are sent, so that
/// an upload cut short can be sent again from the server's committed
/// offset (which trails what was sent by what was in flight).
pub const CLIENT_REPLAY_WINDOW: usize = 64 << 20;
