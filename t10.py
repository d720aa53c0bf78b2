import sys, json, collections, copy; sys.path.insert(0,'/tmp/review')
from wh import *
def padded(n, i):
    base = b'{"business_id":"b","type":"x.y","timestamp":"2026-05-01T10:00:00Z","data":{"i":%d},"pad":"' % i
    return base + b"a"*(n-len(base)-2) + b'"}'
res = {}
for i in range(40):
    r = post(padded(200000, i), f"msg_full{i}")
    res[f"msg_full{i}"] = r.split(b"\r\n")[0].decode()
    if " 200 " not in res[f"msg_full{i}"]:
        print(i, r[:400]); 
print(collections.Counter(res.values()))
json.dump(res, open('/tmp/review/res_full.json','w'))
