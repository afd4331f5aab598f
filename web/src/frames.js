// Reads the replay API's framed format (application/vnd.sightline.replay-chunks): per chunk a
// JSON line {"seq", "contentEncoding", "byteSize"}, then exactly byteSize stored bytes, which
// are inflated here with the browser's own DecompressionStream (see the README's Replay API).
export const FRAMES_MEDIA_TYPE = 'application/vnd.sightline.replay-chunks';

export async function* recordingChunks(response) {
  const reader = response.body.getReader();
  let buffer = new Uint8Array(0);
  const more = async () => {
    const { done, value } = await reader.read();
    if (done) return false;
    const joined = new Uint8Array(buffer.length + value.length);
    joined.set(buffer);
    joined.set(value, buffer.length);
    buffer = joined;
    return true;
  };
  for (;;) {
    let newline;
    while ((newline = buffer.indexOf(10)) < 0) if (!(await more())) return;
    const header = JSON.parse(new TextDecoder().decode(buffer.subarray(0, newline)));
    while (buffer.length < newline + 1 + header.byteSize) {
      if (!(await more())) throw new Error('the recording stream ended inside a chunk');
    }
    const bytes = buffer.slice(newline + 1, newline + 1 + header.byteSize);
    buffer = buffer.subarray(newline + 1 + header.byteSize);
    const stream = new Blob([bytes]).stream();
    const text = await new Response(
      header.contentEncoding === 'gzip' ? stream.pipeThrough(new DecompressionStream('gzip')) : stream,
    ).text();
    yield JSON.parse(text);
  }
}
