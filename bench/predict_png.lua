-- wrk script: POST one 32x32 PNG as a raw image/png body to /predict.
-- usage: wrk -t2 -c32 -d20s -s bench/predict_png.lua http://127.0.0.1:8000/predict --latency -- image.png
local image = ""
function init(args)
  local f = assert(io.open(args[1], "rb"))
  image = f:read("*all")
  f:close()
  wrk.method = "POST"
  wrk.body = image
  wrk.headers["Content-Type"] = "image/png"
end
