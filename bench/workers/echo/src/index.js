export default {
  async fetch(request) {
    if (request.method !== "POST") {
      return new Response("POST a JSON body\n", { status: 405 });
    }
    const body = await request.json();
    return Response.json(body);
  },
};
