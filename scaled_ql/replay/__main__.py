"""`python -m scaled_ql.replay --port=P --tables='{json}'`: a Reverb server (see server.serve)."""
from scaled_ql.replay.server import serve

if __name__ == "__main__":
  serve()
