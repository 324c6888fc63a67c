#!/usr/bin/python3
# Writes the fuzz targets' seed corpus, tests/fuzz/corpus/<target>/ (checked in; re-run this
# after changing it, then commit the result). Deterministic: the same archive gives the same
# files. Images are CIFAR-10 test images 0..5 (the shared archive) in every format the server
# decodes; requests are valid and near-valid ones, multipart bodies as curl -F writes them,
# configs are the config.pbtxt texts of tests/.
#
#   tests/fuzz/make_corpus.py [--data /work/shared/data/cifar-10-binary.tar.gz]
#
# Needs Debian's python3-pil (scripts/setup.sh installs it); hence /usr/bin/python3.
import argparse
import io
import json
import os
import re
import shutil
import struct
import tarfile

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(HERE, "corpus")


def cifar_images(archive, count):
    with tarfile.open(archive, "r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("test_batch.bin"))
        raw = tar.extractfile(member).read(count * 3073)
    images = []
    for i in range(count):
        rec = raw[i * 3073:(i + 1) * 3073]
        chw = rec[1:]
        img = Image.new("RGB", (32, 32))
        img.putdata([(chw[p], chw[1024 + p], chw[2048 + p]) for p in range(1024)])
        images.append(img)
    return images


def encode(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def image_seeds(imgs):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 (w and h swap on decode)
    rgba = imgs[5].convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((32, 32)))
    transparent_gif = imgs[3].convert("P", palette=Image.ADAPTIVE, colors=16)
    wide = imgs[0].resize((40, 8))
    return {
        "png_rgb.png": encode(imgs[0], "PNG"),
        "png_gray.png": encode(imgs[1].convert("L"), "PNG"),
        "png_gray16.png": encode(imgs[1].convert("I").point(lambda v: v * 257).convert("I;16"),
                                 "PNG"),
        "png_palette.png": encode(imgs[2].convert("P", palette=Image.ADAPTIVE, colors=8), "PNG"),
        "png_rgba.png": encode(rgba, "PNG"),
        "png_wide_40x8.png": encode(wide, "PNG"),
        "jpeg_baseline.jpg": encode(imgs[1], "JPEG", quality=75),
        "jpeg_progressive.jpg": encode(imgs[2], "JPEG", quality=60, progressive=True),
        "jpeg_gray.jpg": encode(imgs[3].convert("L"), "JPEG", quality=60),
        "jpeg_cmyk.jpg": encode(imgs[4].convert("CMYK"), "JPEG", quality=60),
        "jpeg_exif_rotated.jpg": encode(wide, "JPEG", quality=60, exif=exif.tobytes()),
        "gif_palette.gif": encode(imgs[3], "GIF"),
        "gif_transparent.gif": encode(transparent_gif, "GIF", transparency=0),
        "bmp_rgb.bmp": encode(imgs[4], "BMP"),
        "webp_lossy.webp": encode(imgs[5], "WEBP", quality=50),
        "tiff_rgb.tif": encode(imgs[0].resize((8, 8)), "TIFF"),
        "truncated.png": encode(imgs[0], "PNG")[:200],
    }


BOUNDARY = "------------------------d74496d66958873e"  # curl's style


def multipart(fields, boundary=BOUNDARY):
    """fields: (name, filename or None, content type or None, bytes), as curl -F writes them."""
    out = b""
    for name, filename, ctype, data in fields:
        out += b"--" + boundary.encode() + b"\r\n"
        disp = 'Content-Disposition: form-data; name="%s"' % name
        if filename is not None:
            disp += '; filename="%s"' % filename
        out += disp.encode() + b"\r\n"
        if ctype is not None:
            out += b"Content-Type: " + ctype.encode() + b"\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + b"--" + boundary.encode() + b"--\r\n"


def with_type(ctype, body):
    return ctype.encode() + b"\n" + body


def multipart_seeds(png, jpg, gif):
    ct = "multipart/form-data; boundary=" + BOUNDARY
    return {
        "curl_file.txt": with_type(ct, multipart([("file", "cat.png", "image/png", png)])),
        "curl_file_jpeg.txt": with_type(ct, multipart([("file", "ship.jpg", "image/jpeg", jpg)])),
        "curl_file_gif.txt": with_type(ct, multipart([("file", "frog.gif", "image/gif", gif)])),
        "curl_fields.txt": with_type(ct, multipart([
            ("model", None, None, b"tiny"), ("version", None, None, b"1"),
            ("top_k", None, None, b"3"), ("file", "cat.png", "image/png", png)])),
        "curl_top_k_bad.txt": with_type(ct, multipart([
            ("top_k", None, None, b"0"), ("file", "cat.png", "image/png", png)])),
        "curl_unknown_model.txt": with_type(ct, multipart([
            ("model", None, None, b"nope"), ("file", "cat.png", "image/png", png)])),
        "browser_quoted_boundary.txt": with_type(
            'multipart/form-data; boundary="----WebKitFormBoundary7MA4YWxkTrZu0gW"; charset=utf-8',
            multipart([("file", "a.gif", "image/gif", gif)],
                      "----WebKitFormBoundary7MA4YWxkTrZu0gW")),
        "no_file_field.txt": with_type(ct, multipart([("model", None, None, b"tiny")])),
        "unterminated.txt": with_type(ct, multipart([("file", "x.png", "image/png", png)])[:-60]),
        "no_boundary.txt": with_type("multipart/form-data", b"--x\r\n\r\n"),
        "raw_png.txt": with_type("image/png", png),
        "raw_octet_stream.txt": with_type("application/octet-stream", jpg),
        "raw_not_an_image.txt": with_type("image/jpeg", b"this is not a JPEG"),
        "text_plain.txt": with_type("text/plain", b"hello"),
        "no_content_type.txt": png,
    }


def kserve_request(shape, data=None, binary_size=None, id_=None, outputs=None, params=None,
                   name="input", datatype="FP32"):
    inp = {"name": name, "shape": shape, "datatype": datatype}
    if data is not None:
        inp["data"] = data
    if binary_size is not None:
        inp["parameters"] = {"binary_data_size": binary_size}
    req = {"inputs": [inp]}
    if id_ is not None:
        req["id"] = id_
    if outputs is not None:
        req["outputs"] = outputs
    if params is not None:
        req["parameters"] = params
    return json.dumps(req, separators=(",", ":")).encode()


def kserve_json_seeds():
    n = 3 * 32 * 32
    flat = [round((i % 255) / 255.0, 3) for i in range(n)]
    nested = [[[flat[c * 1024 + y * 32:(c * 1024 + y * 32) + 32] for y in range(32)]
               for c in range(3)]]
    return {
        "valid_flat.json": kserve_request([1, 3, 32, 32], flat, id_="req-1"),
        "valid_nested.json": kserve_request([1, 3, 32, 32], nested),
        "valid_batch2_classification.json": kserve_request(
            [2, 3, 32, 32], flat + flat,
            outputs=[{"name": "logits", "parameters": {"classification": 3}}]),
        "valid_binary_output.json": kserve_request(
            [1, 3, 32, 32], [0] * n, params={"binary_data_output": True},
            outputs=[{"name": "logits", "parameters": {"binary_data": True}}]),
        "wrong_shape.json": kserve_request([1, 3, 32, 31], [0] * 10),
        "batch_too_big.json": kserve_request([9, 3, 32, 32], [0] * 4),
        "wrong_datatype.json": kserve_request([1, 3, 32, 32], [0] * 4, datatype="INT8"),
        "wrong_name.json": kserve_request([1, 3, 32, 32], [0] * 4, name="images"),
        "too_few_values.json": kserve_request([1, 3, 32, 32], [1.5] * 100),
        "strings_in_data.json": kserve_request([1, 3, 32, 32], ["a", "b"]),
        "unknown_output.json": kserve_request([1, 3, 32, 32], [0] * n,
                                              outputs=[{"name": "probs"}]),
        "classification_zero.json": kserve_request(
            [1, 3, 32, 32], [0] * n,
            outputs=[{"name": "logits", "parameters": {"classification": 0}}]),
        "id_number.json": b'{"id":7,"inputs":[]}',
        "two_inputs.json": b'{"inputs":[{"name":"input"},{"name":"input"}]}',
        "deep.json": b'{"inputs":' + b"[" * 40 + b"]" * 40 + b"}",
        "not_object.json": b"[1,2,3]",
        "bad_utf8_name.json": b'{"inputs":[{"name":"\xff\xfe","datatype":"FP32","shape":[1]}]}',
    }


def kserve_binary_seeds():
    per = 3 * 2 * 2 * 4  # bytes per batch element of the [3,2,2] model
    tail1 = struct.pack("<12f", *[i / 12 for i in range(12)])

    def mode0(header, tail):  # byte 0 % 4 == 0: the header length, bytes 1-2
        return bytes([0]) + struct.pack("<H", len(header)) + header + tail

    def mode1(header, tail):  # byte 0 % 4 == 1: the binary tail's length, bytes 1-2
        return bytes([1]) + struct.pack("<H", len(tail)) + header + tail

    def mode3(text, body):  # byte 0 % 4 == 3: raw header text
        return bytes([3, len(text), 0]) + text + body

    h1 = kserve_request([1, 3, 2, 2], binary_size=per, id_="b1")
    h2 = kserve_request([2, 3, 2, 2], binary_size=2 * per,
                        outputs=[{"name": "logits", "parameters": {"binary_data": True,
                                                                   "classification": 2}}])
    return {
        "binary_batch1.bin": mode0(h1, tail1),
        "binary_batch2_classification.bin": mode1(h2, tail1 + tail1),
        "binary_size_mismatch.bin": mode0(h1, tail1[:-4]),
        "binary_header_past_body.bin": bytes([0, 0xff, 0x7f]) + h1,
        "raw_tensor_header_zero.bin": mode3(b"0", tail1),
        "raw_tensor_wrong_size.bin": mode3(b"0", tail1 + b"\0"),
        "header_not_a_number.bin": mode3(b"12a", h1),
        "header_overflow.bin": mode3(b"99999999999999999999", h1),
        "json_only.bin": bytes([2, 0, 0]) + kserve_request([1, 3, 2, 2], [0.5] * 12),
        "binary_negative_size.bin": mode0(
            b'{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"FP32",'
            b'"parameters":{"binary_data_size":-48}}]}', tail1),
    }


def model_config_seeds():
    seeds = {}
    for path in ["tests/serve/model_config_test.cc", "tests/serve/serve_client.cc",
                 "tests/serve/drift_test.cc"]:
        text = open(os.path.join(ROOT, path)).read()
        for name, body in re.findall(r'constexpr const char\* (k\w+) = R"\((.*?)\)";', text, re.S):
            seeds["%s_%s.pbtxt" % (os.path.basename(path).split(".")[0], name)] = body.encode()
    seeds.update({
        "minimal.pbtxt": b'platform: "onnxruntime_onnx"\n',
        "empty.pbtxt": b"",
        "fixed_batch.pbtxt": b"max_batch_size: 0\ninput [{ name: \"input\" data_type: TYPE_FP32 "
                             b"dims: [1,3,32,32] }]\noutput [{ name: \"logits\" data_type: "
                             b"TYPE_FP32 dims: [1,10] }]\n",
        "batch_in_dims.pbtxt": b"max_batch_size: 8 input [{ name: \"input\" data_type: TYPE_FP32 "
                               b"dims: [-1,3,32,32] }]\n",
        "syntax_error.pbtxt": b'name: "x"\nmax_batch_size: [\n',
        "negative_batch.pbtxt": b"max_batch_size: -1\n",
        "preferred_over_max.pbtxt": b"max_batch_size: 4 dynamic_batching "
                                    b"{ preferred_batch_size: [8] }\n",
        "parameters.pbtxt": b'parameters { key: "intra_op_thread_count" value: '
                            b'{ string_value: "x" } }\n',
    })
    return seeds


def write(target, files):
    d = os.path.join(OUT, target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, data in sorted(files.items()):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    print("%-14s %3d files, %6d bytes" % (target, len(files), sum(map(len, files.values()))))


def main():
    ap = argparse.ArgumentParser(description="Writes tests/fuzz/corpus/<target>/.")
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data",
                                                   "cifar-10-binary.tar.gz"))
    args = ap.parse_args()
    imgs = cifar_images(args.data, 6)
    images = image_seeds(imgs)
    write("image", images)
    write("multipart", multipart_seeds(b"\x89PNG\r\n\x1a\n(image bytes)", b"\xff\xd8\xff(jpeg)",
                                       b"GIF89a(gif)"))
    write("predict", multipart_seeds(images["png_rgb.png"], images["jpeg_baseline.jpg"],
                                     images["gif_palette.gif"]))
    write("kserve_json", kserve_json_seeds())
    write("kserve_binary", kserve_binary_seeds())
    write("model_config", model_config_seeds())


if __name__ == "__main__":
    main()
