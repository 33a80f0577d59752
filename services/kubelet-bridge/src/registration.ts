import { credentials, Metadata } from '@grpc/grpc-js';
import { deviceplugin } from '@iommufd-plugin/proto';

/** One Register call to the kubelet at `kubeletSocket`, bounded by `timeoutMs`. */
export async function registerWithKubelet(kubeletSocket: string, request: deviceplugin.RegisterRequest, timeoutMs: number): Promise<void> {
  const client = new deviceplugin.RegistrationClient(`unix:${kubeletSocket}`, credentials.createInsecure());
  try {
    await new Promise<void>((resolve, reject) =>
      client.register(request, new Metadata(), { deadline: Date.now() + timeoutMs }, (err) => (err ? reject(err) : resolve())),
    );
  } finally {
    client.close();
  }
}
