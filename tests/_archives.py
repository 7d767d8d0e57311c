"""Damage a file that ``torch.save`` wrote (a zip archive) the way a disk or a transfer does."""
import struct
import zipfile


def flip_tensor_bit(path, offset: int, mask: int) -> tuple:
    """The bytes of ``path`` with bits ``mask`` of byte ``offset`` of the first tensor member
    of more than 64 bytes flipped (its stored data: the zip's CRC-32 no longer matches; the
    archive's structure is intact), and that member's zipfile.ZipInfo: ``(bytes, member)``."""
    b = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as z:
        member = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 64)
    n, extra = struct.unpack("<HH", b[member.header_offset + 26:member.header_offset + 30])
    b[member.header_offset + 30 + n + extra + offset] ^= mask
    return bytes(b), member
