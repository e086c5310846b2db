import torch
torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True
def t(fn, reps=200):
    for _ in range(10): fn()
    s=torch.cuda.Event(enable_timing=True); e=torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(); s.record()
    for _ in range(reps): fn()
    e.record(); torch.cuda.synchronize(); return s.elapsed_time(e)/reps*1000
for dt in (torch.bfloat16, torch.float32):
    for (M,K,Ns) in ((8704,1024,(1024,1025,1032,1040,1056,1088,1152,1280,8,16)),(16384,1536,(1536,1544,1552,1600,1664,1792,8,16))):
        a=torch.randn(M,K,device='cuda',dtype=dt)
        for N in Ns:
            b=torch.randn(K,N,device='cuda',dtype=dt); c=torch.empty(M,N,device='cuda',dtype=dt)
            w=torch.randn(N,K,device='cuda',dtype=dt)
            us=t(lambda: torch.mm(a,b,out=c)); us2=t(lambda: torch.mm(a,w.t(),out=c))
            print(f"{str(dt):15s} M={M} K={K} N={N:5d}  NN {us:7.1f} us  {2*M*K*N/us/1e6:6.0f} TF/s | NT {us2:7.1f} us", flush=True)
